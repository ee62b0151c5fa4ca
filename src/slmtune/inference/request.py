"""What one generation request is, inside and out: its state (a request of ``n`` choices, each a sequence with
its tokens and KV-cache fill), the events its consumer receives, and the two ways submitting one can be refused.
Shared by both engines (``batching.BatchEngine`` on PyTorch, ``onnx_runtime.OnnxEngine``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from slmtune.inference.sampling import SamplingParams


class Waker(Protocol):
    """The engine a request belongs to: cancelling wakes its scheduler thread."""

    def wake(self) -> None: ...


class PromptTooLong(ValueError):
    """The prompt and the completion asked for do not fit the model's context (a 400 naming both counts)."""


class Overloaded(RuntimeError):
    """The model's queue is full: answer 429 and ask the client to retry."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


# --- what a request's consumer receives (pushed from the scheduler thread through ``emit``) ----------------------
@dataclass
class Delta:
    choice: int
    text: str
    logprobs: list[dict] | None = None  # OpenAI ChatCompletionTokenLogprob dicts, when asked for


@dataclass
class Finished:
    choice: int
    finish_reason: str  # "stop" | "length"
    completion_tokens: int
    logprobs: list[dict] | None = None  # the rest, if any were held back with text


@dataclass
class Failed:
    error: BaseException


class GenerationRequest:
    """A chat request with ``n`` choices, each a :class:`SequenceState` in the batch."""

    def __init__(self, engine: Waker, prompt: list[int], params: SamplingParams, n: int, adapter: str | None,
                 emit: Callable[[object], None], project: str | None = None):
        self.engine = engine
        self.project = project  # whose request (fair shares between projects); None outside the service
        self.prompt = prompt
        self.params = params
        self.adapter = adapter
        self.emit = emit
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.first_token: float | None = None
        self.seqs = [SequenceState(self, i) for i in range(n)]

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    def cancel(self) -> None:
        """Leave the batch at the next token boundary (the slot is freed); nothing more is emitted."""
        self.cancelled = True
        self.engine.wake()


class SequenceState:
    """One choice: its tokens, its place in the KV cache, its detokenizer state."""

    def __init__(self, request: GenerationRequest, choice: int):
        self.request = request
        self.choice = choice
        self.params = request.params
        self.generator = request.params.generator(choice, "cpu")
        self.tokens: list[int] = []  # generated
        self.cached = 0  # cache positions of its slot that hold its keys/values
        self.done = False
        self.text = ""
        self.sent = 0  # characters of text emitted
        self.held: list[dict] = []  # logprob entries whose text is not emitted yet
        self.last_time: float | None = None
        self.constraint = None  # constraints.RowConstraint, when the request has a grammar

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt

    @property
    def adapter(self) -> str | None:
        return self.request.adapter

    @property
    def project(self) -> str | None:
        return self.request.project
