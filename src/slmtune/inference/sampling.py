"""Per-row token choice for a batch: greedy or temperature/top-p sampling, each row with its own random stream.

A row's ``torch.Generator`` is seeded from the request's ``seed`` (and its choice index), so a sampled request gives
the same tokens whichever requests share its batch. Also the OpenAI ``logprobs`` / ``top_logprobs`` of each choice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from slmtune.inference.constraints import Grammar

MAX_TOP_LOGPROBS = 20


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token (0..20), only with logprobs
    grammar: Grammar | None = None  # what every choice is held to (tools, response_format): ``constraints``

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        self.stop = [s for s in self.stop if s]

    @property
    def greedy(self) -> bool:
        return not self.temperature or self.temperature <= 0

    def generator(self, choice: int, device) -> torch.Generator | None:
        if self.greedy:
            return None
        g = torch.Generator(device=device)
        seed = random.getrandbits(63) if self.seed is None else (self.seed * 1_000_003 + choice) % (2**63)
        g.manual_seed(seed)
        return g


def choose(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
           ) -> torch.Tensor:
    """One token per row of ``logits`` ``[rows, vocab]`` (fp32)."""
    out = logits.argmax(dim=-1)
    for i, (p, g) in enumerate(zip(params, generators)):
        if p.greedy:
            continue
        row = logits[i].cpu() / p.temperature  # the generators are CPU streams (the same on any device)
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(row, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            drop = probs.cumsum(-1) - probs >= p.top_p  # keep the smallest set reaching top_p
            sorted_logits[drop] = float("-inf")
            row = torch.full_like(row, float("-inf")).scatter(0, order, sorted_logits)
        probs = torch.softmax(row, dim=-1)
        out[i] = torch.multinomial(probs, 1, generator=g)[0]
    return out


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, tops: list[int]) -> list[tuple[float, list]]:
    """For each row: (log-probability of the chosen token, [(token id, logprob)] of the ``tops[row]`` likeliest)."""
    lp = torch.log_softmax(logits, dim=-1)
    picked = lp.gather(1, chosen[:, None])[:, 0].tolist()
    k = max(tops) if tops else 0
    if k:
        vals, ids = lp.topk(k, dim=-1)
        vals, ids = vals.tolist(), ids.tolist()
    return [(picked[i], list(zip(ids[i][:t], vals[i][:t])) if t else []) for i, t in enumerate(tops)]
