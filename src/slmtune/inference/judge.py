"""The judge a model grader calls (``score_model``, ``label_model``): the batching engine, every conversation of a
batch submitted at once so they decode together, each reply held to the grader's JSON schema by the same
constrained decoding chat's ``response_format`` uses. Implements ``graders.grade.Judge``."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path

from slmtune.inference.sampling import SamplingParams
from slmtune.inference.serving import ModelServer, collect

JUDGE_TIMEOUT_S = 600.0  # one batch's replies


class EngineJudge:
    """``resolve(model) → (base id, adapter (key, path) or None)`` names what a judge model is; by default a base
    model id (or a model folder). ``server``: the service's, or one of its own (a training run)."""

    def __init__(self, server: ModelServer | None = None,
                 resolve: Callable[[str], tuple[str, tuple[str, Path] | None]] | None = None):
        self.server = server or ModelServer(max_running=16)
        self.resolve = resolve or (lambda model: (model, None))
        self.own = server is None

    def complete(self, model: str, conversations: list[list[dict]], *, response_format: dict, max_tokens: int,
                 temperature: float, top_p: float, seed: int | None) -> list[str]:
        base, adapter = self.resolve(model)
        prepared = self.server.prepare_sync(base, adapter)
        grammar = None
        pending = []
        for i, messages in enumerate(conversations):
            if grammar is None:  # one grammar for the batch: the schema is the grader's, not the sample's
                grammar = self.server.grammar(prepared, None, response_format=response_format)
            params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                    seed=None if seed is None else seed + i, grammar=grammar)
            events: queue.SimpleQueue = queue.SimpleQueue()
            pending.append((self.server.submit(prepared, messages, params, emit=events.put), events))
        return [collect(req, events.get, JUDGE_TIMEOUT_S).choices[0].text for req, events in pending]

    def close(self) -> None:
        if self.own:
            self.server.shutdown()
