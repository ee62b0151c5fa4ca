"""Fine-tuning methods: one entry each, name → how to make the model trainable, what it saves, and its traits.

An entry declares ``build(cfg, ctx) -> peft.PeftConfig | None`` (None: train every weight), the options of
``method.*`` it reads (any other option set in a config is an error naming the valid ones), the precisions it
supports, and its traits — the facts other layers used to derive from its name (as PEFT keeps
``is_prompt_learning`` on its config classes): whether its artifact merges into the base weights, whether the base
is loaded quantized, whether it is prompt learning (and whether its virtual tokens take input positions), whether
its layers wrap the linear layers (and take bf16 adapter autocast), whether its adapters share a base's serving
batch, the PEFT type its adapter files name, and a hook run after each optimizer step.
Adding a method is one entry here plus one row in the method test table (tests/integration/test_methods.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slmtune.config import MethodSection

ADAPTER_OPTS = ("r", "alpha", "dropout", "target_modules")
LORA_OPTS = (*ADAPTER_OPTS, "rslora", "init")
PROMPT_OPTS = ("num_virtual_tokens",)


@dataclass
class BuildContext:
    """What a method may need beyond its options: the model's linear layers and the run's step count."""

    linear_names: list[str] = field(default_factory=list)  # leaf names of nn.Linear modules, lm_head excluded
    total_steps: int = 0


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    build: Callable[[MethodSection, BuildContext], Any]
    options: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32", "bf16", "bf16-mixed")
    peft_type: str | None = None  # adapter_config.json's peft_type (None: full fine-tuning saves a plain model)
    mergeable: bool = True  # the adapter folds into the base weights (slmtune export merge, GGUF, ONNX)
    merge_note: str = ""  # why not, when it does not
    quantized: bool = False  # base weights loaded through bitsandbytes
    prompt_learning: bool = False  # virtual tokens or key/value prefixes instead of weight changes
    virtual_inputs: bool = False  # its virtual tokens take input positions (the sequence grows by num_virtual_tokens)
    on_linear: bool = False  # its layers wrap the model's linear layers (each keeps a copy of its input for backward)
    autocast: bool = False  # its PEFT layers take model.adapter_autocast (bf16 adapter matmuls on a bf16 base)
    batchable: bool = False  # its adapters share the base's batch when served (inference/lora_batch), many at once
    after_optimizer_step: Callable[[Any, int], None] | None = None  # (PEFT model, global step): e.g. AdaLoRA's budget

    @property
    def every_weight(self) -> bool:
        """Full fine-tuning: every weight trains and the run saves a plain model, not an adapter."""
        return self.peft_type is None

    @property
    def artifact(self) -> str:
        return "model" if self.every_weight else "adapter"


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} registered twice")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None


def of_adapter(config: dict) -> Method | None:
    """The method that wrote an adapter, from its ``adapter_config.json`` (None: a PEFT type slmtune does not train).
    LoRA's variants share one PEFT type: ``use_dora`` tells DoRA apart; QLoRA's adapter is a LoRA adapter."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type == "LORA" and config.get("use_dora"):
        return METHODS["dora"]
    return next((m for m in METHODS.values() if m.peft_type == peft_type), None)


def names() -> str:
    """Every method's name, comma-separated (help texts, errors)."""
    return ", ".join(METHODS)


def resolve_targets(cfg: MethodSection, ctx: BuildContext) -> list[str]:
    """'all-linear' → every linear layer but the head; an explicit list must match modules of the model."""
    if cfg.target_modules == "all-linear":
        return sorted(ctx.linear_names)
    wanted = [cfg.target_modules] if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    unknown = [t for t in wanted if t not in ctx.linear_names]
    if unknown and ctx.linear_names:
        raise ValueError(f"method.target_modules: {', '.join(unknown)} match no linear layer of this model; "
                         f"choose from {', '.join(sorted(ctx.linear_names))} or 'all-linear'")
    return wanted


def _lora(cfg: MethodSection, ctx: BuildContext, **extra):
    from peft import LoraConfig, TaskType

    init = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}[cfg.init]
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=resolve_targets(cfg, ctx), bias="none", use_rslora=cfg.rslora,
                      init_lora_weights=init, **extra)


def _ia3(cfg: MethodSection, ctx: BuildContext):
    from peft import IA3Config, TaskType

    if cfg.target_modules == "all-linear":
        targets = sorted(ctx.linear_names)
    else:
        targets = resolve_targets(cfg, ctx)
    ff = cfg.feedforward_modules or [t for t in targets if t in ("down_proj", "fc2", "dense_4h_to_h", "w2")]
    return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=ff)


def _prompt(kind: str):
    def build(cfg: MethodSection, ctx: BuildContext):
        import peft
        from peft import TaskType

        n = cfg.num_virtual_tokens
        if kind == "prompt_tuning":
            return peft.PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n)
        if kind == "prefix_tuning":
            return peft.PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n)
        return peft.PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, encoder_hidden_size=128)

    return build


def _adalora_budget(peft_model, step: int) -> None:
    """AdaLoRA reallocates rank after each optimizer step, before gradients are zeroed (PEFT's contract)."""
    peft_model.base_model.update_and_allocate(step)


def _adalora(cfg: MethodSection, ctx: BuildContext):
    from peft import AdaLoraConfig, TaskType

    total = max(ctx.total_steps, 4)
    return AdaLoraConfig(task_type=TaskType.CAUSAL_LM, init_r=cfg.init_r, target_r=cfg.r, lora_alpha=cfg.alpha,
                         lora_dropout=cfg.dropout, target_modules=resolve_targets(cfg, ctx), total_step=total,
                         tinit=max(1, total // 10), tfinal=max(1, total // 5), deltaT=1)


def _loha(cfg: MethodSection, ctx: BuildContext):
    from peft import LoHaConfig, TaskType

    return LoHaConfig(task_type=TaskType.CAUSAL_LM, r=cfg.r, alpha=cfg.alpha, rank_dropout=cfg.dropout,
                      target_modules=resolve_targets(cfg, ctx))


def _lokr(cfg: MethodSection, ctx: BuildContext):
    from peft import LoKrConfig, TaskType

    return LoKrConfig(task_type=TaskType.CAUSAL_LM, r=cfg.r, alpha=cfg.alpha, rank_dropout=cfg.dropout,
                      target_modules=resolve_targets(cfg, ctx))


def _vera(cfg: MethodSection, ctx: BuildContext):
    from peft import TaskType, VeraConfig

    return VeraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.r, vera_dropout=cfg.dropout,
                      target_modules=resolve_targets(cfg, ctx), save_projection=True)


_NO_MERGE = "it adds virtual tokens in front of the input instead of changing weights; serve the adapter as it is"

_LINEAR = dict(on_linear=True)  # adapters on the linear layers
register(Method("lora", "Low-rank adapters (Hu et al., 2021); rslora and pissa/olora/gaussian init as options",
                _lora, LORA_OPTS, peft_type="LORA", autocast=True, batchable=True, **_LINEAR))
register(Method("dora", "Weight-decomposed LoRA: low-rank direction plus a trained magnitude (Liu et al., 2024)",
                lambda c, x: _lora(c, x, use_dora=True), LORA_OPTS, peft_type="LORA", autocast=True, **_LINEAR))
register(Method("qlora", "LoRA on a base quantized to 4-bit NF4 with double quantization (or 8-bit: bits 8), "
                "through bitsandbytes (Dettmers et al., 2023)", _lora, (*LORA_OPTS, "bits"),
                precisions=("fp32", "bf16"), peft_type="LORA", quantized=True, batchable=True, **_LINEAR))
register(Method("ia3", "(IA)3: learned rescaling vectors on keys, values and feed-forward (Liu et al., 2022)",
                _ia3, ("target_modules", "feedforward_modules"), peft_type="IA3", **_LINEAR))
_PROMPT = dict(mergeable=False, prompt_learning=True)
register(Method("prompt_tuning", "Soft prompt: trained virtual token embeddings (Lester et al., 2021)",
                _prompt("prompt_tuning"), PROMPT_OPTS, peft_type="PROMPT_TUNING", merge_note=_NO_MERGE,
                virtual_inputs=True, **_PROMPT))
register(Method("prefix_tuning", "Trained key/value prefixes in every layer (Li & Liang, 2021)",
                _prompt("prefix_tuning"), PROMPT_OPTS, peft_type="PREFIX_TUNING",
                merge_note="it adds trained key/value prefixes to every attention layer instead of changing weights; "
                "serve the adapter as it is", **_PROMPT))
register(Method("p_tuning", "P-tuning: virtual tokens produced by a small trained encoder (Liu et al., 2021)",
                _prompt("p_tuning"), PROMPT_OPTS, peft_type="P_TUNING", merge_note=_NO_MERGE, virtual_inputs=True,
                **_PROMPT))
register(Method("adalora", "AdaLoRA: LoRA whose rank budget is reallocated across layers while training "
                "(Zhang et al., 2023); method.r is the target rank, method.init_r the starting one",
                _adalora, (*ADAPTER_OPTS, "init_r"), peft_type="ADALORA", autocast=True,
                after_optimizer_step=_adalora_budget, **_LINEAR))
register(Method("loha", "LoHa: low-rank Hadamard product adapters (Hyeon-Woo et al., 2022)", _loha, ADAPTER_OPTS,
                peft_type="LOHA", autocast=True, **_LINEAR))
register(Method("lokr", "LoKr: low-rank Kronecker product adapters (Yeh et al., 2023)", _lokr, ADAPTER_OPTS,
                peft_type="LOKR", autocast=True, **_LINEAR))
register(Method("vera", "VeRA: shared frozen random matrices with trained scaling vectors (Kopiczko et al., 2024); "
                "method.r defaults to 256", _vera, ("r", "dropout", "target_modules"), peft_type="VERA", **_LINEAR))
register(Method("full", "Full fine-tuning: every weight is trained", lambda c, x: None, (), precisions=("fp32",
                "bf16-mixed")))


def option_defaults(name: str) -> dict:
    """Per-method defaults that differ from the config's field defaults."""
    return {"vera": {"r": 256}}.get(name, {})
