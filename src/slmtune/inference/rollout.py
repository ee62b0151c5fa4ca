"""GRPO's rollouts on slmtune's continuous-batching engine (TRL's ``rollout_func``), instead of one
``model.generate`` call per batch.

The engine holds its own copy of the base model. When the training step changes, the adapter's live weights are
merged into that copy — each LoRA layer's weight becomes the base weight plus ``B @ A × scale`` (PEFT's
``get_delta_weight``), copied in place — so rollouts decode with plain matmuls, no adapter on the side. Each
prompt's group is one request with ``n`` choices, every request of the batch submitted at once, so the whole
generation batch decodes together, rows leaving as they finish (no padding to the longest completion, no steps after
EOS). Used for plain LoRA (``Method.batchable``, not quantized, no DoRA); others sample with TRL's generate.
"""

from __future__ import annotations

import queue

import torch

from slmtune.inference.batching import release_openmp_pool
from slmtune.inference.request import Failed, Finished
from slmtune.inference.sampling import SamplingParams
from slmtune.inference.serving import ModelServer

ROLLOUT_TIMEOUT_S = 3600.0


class EngineRollout:
    """``rollout(prompts, trainer)`` → TRL's rollout dict (``prompt_ids``, ``completion_ids``, ``logprobs``). The
    prompts arrive as TRL's sampler repeats them (each ``num_generations`` times in a row)."""

    def __init__(self, base: str, precision: str, seed: int = 0, max_running: int = 256):
        self.base, self.seed = base, seed
        # its own engine (its own copy of the weights, merged with the adapter); a whole generation batch runs at
        # once, its prompts prefilled in large chunks (no chat latency to protect here)
        self.server = ModelServer(precision=precision, max_running=max_running, max_queued=4096,
                                  prefill_tokens=4096)
        self.step: int | None = None
        self.original: dict[str, torch.Tensor] = {}  # the engine's base weights of the adapted layers
        self.calls = 0

    @torch.no_grad()
    def _sync(self, trainer, engine) -> None:
        """The adapter as it is now, merged into the engine's copy once per optimizer step (the engine is idle)."""
        step = trainer.state.global_step
        if step == self.step:
            return
        from peft.tuners.lora import LoraLayer

        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        target = dict(engine.model.named_modules())
        for name, layer in peft_model.named_modules():
            if not isinstance(layer, LoraLayer) or not layer.active_adapters:
                continue
            key = name.removeprefix("base_model.model.")
            weight = target[key].weight
            if key not in self.original:
                self.original[key] = weight.detach().clone()
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
            weight.copy_(self.original[key] + delta.to(weight.dtype))
        engine.weights_changed()
        self.step = step

    def __call__(self, prompts: list, trainer) -> dict:
        prepared = self.server.prepare_sync(self.base)
        self._sync(trainer, prepared.engine)
        args = trainer.args
        groups: list[tuple[list, int]] = []  # consecutive equal prompts: one request with n choices
        for p in prompts:
            if groups and groups[-1][0] == p:
                groups[-1] = (p, groups[-1][1] + 1)
            else:
                groups.append((p, 1))
        pending = []
        for i, (messages, n) in enumerate(groups):
            params = SamplingParams(max_new_tokens=args.max_completion_length, temperature=args.temperature,
                                    top_p=args.top_p, seed=self.seed + 1_000_003 * self.calls + 7919 * i)
            ids = ModelServer.prompt_ids(prepared.tokenizer, messages)
            events: queue.SimpleQueue = queue.SimpleQueue()
            req = prepared.engine.submit(ids, params, n=n, emit=events.put)
            pending.append((req, events, ids))
        self.calls += 1
        release_openmp_pool()  # this (training) thread waits now: the engine's thread gets the cores
        prompt_ids, completion_ids = [], []
        for req, events, ids in pending:
            left = len(req.seqs)
            while left:
                ev = events.get(timeout=ROLLOUT_TIMEOUT_S)
                if isinstance(ev, Failed):
                    raise ev.error
                left -= isinstance(ev, Finished)
            for seq in req.seqs:
                prompt_ids.append(list(ids))
                completion_ids.append(list(seq.tokens))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    def close(self) -> None:
        self.server.shutdown()
