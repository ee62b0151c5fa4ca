"""Reinforcement from a grader (``train.objective: grpo``), through TRL's GRPOTrainer, on any adapter method.

Each step samples ``rl.group_size`` completions for each prompt, scores them with the grader (``slmtune.graders``:
OpenAI's grader types, a python grader in its sandbox, a judge model through the batching engine) or with
``rl.reward`` (a Python function), and moves the adapter toward the completions that scored above their group's
mean. TRL is used as it is: its loss, clipping, KL and logging; what is ours is the data (prompt records), the
reward function around the grader, and the metric names (``train_reward_mean`` … as OpenAI's events carry them).

``rollout``: a callable that samples the completions instead of TRL's ``model.generate`` (TRL's ``rollout_func``);
the engine takes it from its caller, since generation engines live above it.
"""

from __future__ import annotations

import importlib
import json
import os
import threading

from slmtune import events as ev
from slmtune.config import ConfigError
from slmtune.data.prompts import PromptRecord
from slmtune.data.tools import plain_messages
from slmtune.graders.grade import Grade, grade_batch, sample_of
from slmtune.graders.spec import leaves, parse_grader
from slmtune.training.trainer import TrainerMetricsMixin

MIN_GRADED_FOR_FAILURE = 32


class GraderFailed(RuntimeError):
    """More than ``rl.max_error_share`` of the samples failed to grade: the run stops with the grader's error."""


def load_grader(spec: dict):
    """``rl.grader`` as a grader; ConfigError naming each field that is wrong."""
    from pydantic import ValidationError

    try:
        return parse_grader(spec)
    except ValidationError as e:
        raise ConfigError([f"rl.grader.{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()]) from None


def load_reward(ref: str):
    """``module:function`` → the function; ConfigError naming what is wrong."""
    mod, _, fn = ref.partition(":")
    if not mod or not fn:
        raise ConfigError([f"rl.reward: expected 'module:function', got {ref!r}"])
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError([f"rl.reward: cannot load {ref!r}: {e}"]) from None
    if not callable(f):
        raise ConfigError([f"rl.reward: {ref!r} is not callable"])
    return f


def prompt_dataset(records: list[PromptRecord]):
    from datasets import Dataset

    return Dataset.from_dict({
        # tools in the fallback's plain form (data.tools), as training and serving render them
        "prompt": [[{"role": m["role"], "content": m["content"]} for m in plain_messages(r.messages, r.tools)]
                   for r in records],
        "item": [json.dumps(r.item, ensure_ascii=False) for r in records],
    })


class GraderReward:
    """TRL's reward function around a grader: completions → rewards, each sample's grade kept for the events
    (a few sampled completions with their rewards) and the error count that can stop the run."""

    def __init__(self, grader, judge=None, max_error_share: float = 0.5):
        self.grader, self.judge, self.max_error_share = grader, judge, max_error_share
        self.__name__ = grader.name
        self.graded = self.failed = 0
        self.last_error = ""
        self.recent: list[dict] = []  # the last batch's first samples: text, reward
        self._lock = threading.Lock()

    def __call__(self, prompts, completions, item, **kw) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        grades: list[Grade] = grade_batch(self.grader, [sample_of(t) for t in texts], [json.loads(i) for i in item],
                                          judge=self.judge)
        with self._lock:
            self.graded += len(grades)
            bad = [g for g in grades if g.failed]
            self.failed += len(bad)
            if bad:
                self.last_error = next(iter(bad[-1].errors.values()))
            self.recent = [{"completion": t[:500], "reward": round(g.reward, 4)} for t, g in zip(texts, grades)][:4]
            if self.graded >= MIN_GRADED_FOR_FAILURE and self.failed > self.max_error_share * self.graded:
                raise GraderFailed(
                    f"the grader failed on {self.failed} of {self.graded} samples (more than rl.max_error_share "
                    f"{self.max_error_share:g}); the last error: {self.last_error[-1500:]}")
        return [g.reward for g in grades]


def unused_fields(grader) -> list[str]:
    """OpenAI fields a grader may carry that mean nothing here: accepted, and said so (never silently)."""
    notes = []
    for g in leaves(grader):
        if getattr(g, "image_tag", None):
            notes.append(f"grader {g.name}: image_tag {g.image_tag!r} is accepted and not used (python graders run "
                         "on this server's Python, in its sandbox)")
        sp = getattr(g, "sampling_params", None)
        if sp is not None and sp.reasoning_effort is not None:
            notes.append(f"grader {g.name}: sampling_params.reasoning_effort is accepted and not used (the judge "
                         "models here do not reason in hidden tokens)")
    return notes


def _with_fields(fn):
    """A Python reward function called as TRL calls one on a dataset with columns: ``prompts``, ``completions`` and
    each field of the records (``topic=[...]``) as a keyword list (a record without the field gives None)."""

    def reward(prompts, completions, item, **kw):
        items = [json.loads(i) for i in item]
        keys = sorted(set().union(*items) - {"messages"})
        return fn(prompts=prompts, completions=completions, **{k: [it.get(k) for it in items] for k in keys})

    reward.__name__ = getattr(fn, "__name__", "reward")
    return reward


def build_grpo_trainer(cfg, model, tokenizer, train: list[PromptRecord], val: list[PromptRecord], args_kwargs: dict,
                       *, judge=None, rollout=None, bus: ev.EventBus | None = None):
    """A GRPOTrainer with the arguments the SFT path uses; ``train.batch_size`` counts prompts, each sampled
    ``rl.group_size`` times."""
    from trl import GRPOConfig, GRPOTrainer

    rl = cfg.rl  # check_config made sure it names one reward: a grader or a function
    if rl.grader:
        grader = load_grader(rl.grader)
        reward = GraderReward(grader, judge, rl.max_error_share)
        if bus is not None:
            for note in unused_fields(grader):
                bus.emit(ev.message(note, level="warn"))
    else:
        reward = _with_fields(load_reward(rl.reward))

    class SLMGRPOTrainer(TrainerMetricsMixin, GRPOTrainer):
        pass

    kw = {k: v for k, v in args_kwargs.items()
          if k not in ("prediction_loss_only", "train_sampling_strategy", "remove_unused_columns",
                       "per_device_train_batch_size", "per_device_eval_batch_size")}
    n = rl.group_size
    args = GRPOConfig(
        **kw, per_device_train_batch_size=cfg.train.batch_size * n, per_device_eval_batch_size=cfg.train.batch_size * n,
        num_generations=n, num_generations_eval=n, max_completion_length=rl.max_completion_tokens,
        temperature=rl.temperature, top_p=rl.top_p, beta=rl.kl_coef, epsilon=rl.clip, loss_type=rl.loss,
        remove_unused_columns=False, log_completions=False, mask_truncated_completions=False,
        eval_on_start=bool(val),  # the starting model's validation reward: where the curve begins
    )
    if rollout is not None:  # TRL calls its rollout_func hook experimental and says so once; it is our choice here
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if rl.eval_samples and val:
        val = val[: rl.eval_samples]
    trainer = SLMGRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=prompt_dataset(train),
                             eval_dataset=prompt_dataset(val) if val else None, processing_class=tokenizer,
                             rollout_func=rollout)
    trainer.grader_reward = reward if isinstance(reward, GraderReward) else None
    return trainer
