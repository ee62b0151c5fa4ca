"""Fine-tuning methods: one entry each, name → how to make the model trainable and how to save it.

A method entry declares a ``build(method_cfg) -> peft.PeftConfig | None`` (None: train all weights), what it
saves (``adapter`` in plain PEFT format or a full ``model``), and the precisions it supports. Adding a method is
one entry here plus one row in the shared method test table (tests/integration/test_methods.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slmtune.config import MethodSection


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    build: Callable[[MethodSection], object | None]
    artifact: str  # "adapter" | "model"
    precisions: tuple[str, ...] = ("fp32", "bf16")


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} registered twice")
    METHODS[method.name] = method
    return method


def _targets(cfg: MethodSection):
    return cfg.target_modules


def _lora(cfg: MethodSection, **extra):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=_targets(cfg),
        bias="none",
        **extra,
    )


register(Method("lora", "Low-rank adapters on every linear layer (Hu et al., 2021)", _lora, "adapter"))
register(
    Method(
        "dora",
        "Weight-decomposed low-rank adaptation: LoRA on the direction, a trained magnitude (Liu et al., 2024)",
        lambda cfg: _lora(cfg, use_dora=True),
        "adapter",
    )
)
register(Method("full", "Full fine-tuning: every weight is trained (fp32 only)", lambda cfg: None, "model", ("fp32",)))


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None
