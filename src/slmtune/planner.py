"""Predict peak memory, throughput, wall time and cost of a training run before running it.

``slmtune plan CONFIG`` / ``slmtune.plan(config)``. Parameter counts are exact: the model is built on the ``meta``
device (no weights loaded) and the method applied to it. Memory is weights + trainable state (fp32 weight, grad
and two AdamW moments) + activations of the longest batch + logits + a fixed runtime overhead. Throughput is a
FLOP rate divided by the run's FLOPs per token (``training/speed.py``). Where the model has been trained on this
machine before, the rate is the one those runs reached (every run logs it: ``calibration``), and the plan says so.
Before that it is this machine's measured matmul speed (a short probe, cached in ``$SLMTUNE_HOME/probe.json``)
times an efficiency factor (its own for bf16 where AMX is at work, whose matmuls outrun the rest of a step), and
the plan states the error measured on this class of CPU. The runtime overhead, the
activation factor and the efficiency factors are calibrated against ``benchmarks/methods.py`` on this project's
machines; docs/methods.md prints predicted against measured for every method.
"""

from __future__ import annotations

import collections
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from slmtune import paths
from slmtune.config import TrainConfig, coerce_config
from slmtune.data.sources import stream_source
from slmtune.data.tokenize import encode_example
from slmtune.methods import METHODS, Method, get
from slmtune.models.loading import available_memory_mb, cpu_has, load_tokenizer, resolve_precision
from slmtune.models.registry import resolve
from slmtune.training import speed
from slmtune.training.head_loss import CHUNK_ROWS

MB = 1024 * 1024
SAMPLE = 2000  # examples tokenized to measure a data file (the first ones; the rest are counted)
# Calibrated on the project machine (benchmarks/methods.py, smollm2-135m-instruct, batch 8): see docs/methods.md.
# Fit on the first table of docs/methods.md (batch 8, demo data); the second table there checks other settings.
RUNTIME_OVERHEAD_MB = 512.0  # python + torch + transformers + peft + tokenizer + allocator slack
ACTIVATION_ELEMS = (8.8, 4.4)  # saved elements per token per layer ≈ a·hidden + b·intermediate
LOGIT_COPIES = 3.5  # fp32 logits, log-softmax, its gradient, casts
ADAPTER_INPUT_COPY = 1.1  # bf16 base + fp32 adapters: each adapted layer keeps an fp32 copy of its input
AUTOCAST_TEMPS = 0.8  # adapter autocast: bf16 casts and adapter outputs kept for backward, × the fp32 input copies
# fp32 base: what the adapters keep for backward beyond the activation factors above (fit on bf16 runs, where the
# adapters' inputs are fp32 copies counted apart), × the same fp32 input bytes. Fit 2026-12-07 on LoRA in fp32 (the
# auto precision of an AVX2-only EPYC, demo data, batch 8): 4,253 MB measured, 2,761 predicted without this term.
FP32_ADAPTER_INPUTS = 2.0
# Gradient checkpointing: the share of the activations (and adapter inputs) the process still holds. Live memory
# would be the layers' checkpoints and one layer's recomputed activations (1/30 of them on the default model, ~5%
# with the checkpoints), but glibc's malloc keeps what the recomputation frees: its mmap threshold rises to the
# size of the freed blocks, which then come from heap arenas that fragment. A LoRA step at 16 × 149 tokens in fp32:
# +3,355 MB with checkpointing against +8,644 MB without (+825 / +3,737 with MALLOC_MMAP_THRESHOLD_=65536, which
# halves the speed: 70-80 against 135-171 tokens/s). Fit 2026-12-07 on LoRA fp32 on an AVX2-only EPYC, demo data,
# batch 4 and 16 (1,834 and 4,024 MB measured; the formula for live memory predicted 1,237 and 1,503); not
# checked in bf16.
GC_RSS_SHARE = 0.47
METHOD_EXTRA = {  # temporaries: (× fp32 size of the adapted weights, × the fp32 adapter-input copies per token)
    # refit 2026-11-30 after the fused loss and adapter autocast (docs/methods.md, calibrate setting); dora and
    # qlora's per-token parts from the earlier two-point fit, rescaled.
    "dora": (0.07, 1.68), "qlora": (0.74, 0.93), "adalora": (1.45, 0.0), "loha": (0.40, 0.0), "lokr": (0.70, 0.0),
    "vera": (0.9, 0.0),
}
# achieved / probed matmul FLOP/s (mixed: a guess). bf16 refit 2026-12-06 after the training attention
# (training/attention.py): LoRA on the demo and long sets measured 657 and 697 tokens/s where 0.423 predicted 572
# and 556 (docs/benchmarks.md)
EFFICIENCY = {"fp32": 0.97, "bf16": 0.50, "bf16-mixed": 0.30}
# The same where AMX is at work (``cpu_class``): its bf16 matmuls probe at 1.8-2.5 TFLOP/s on two cores, 2-3x an
# AVX512-BF16 CPU's, but the rest of a step (norms, activations, attention softmax, LoRA's small matmuls, the
# optimizer: memory- and dispatch-bound) runs no faster, so a step reaches a far smaller share of that peak. Fit
# 2026-12-07 on LoRA, demo data, batch 8 on two AMX Xeons: 548 tokens/s (median of 9 runs) against a 2.23 TFLOP/s
# probe (0.17), and 339 against 1.82 on a slower instance (0.13); 0.15 predicts them at -12% and +16% (the 0.50
# above: +190%). An AMX-flagged Xeon whose probe gave 0.91 TFLOP/s (2026-11-30, docs/methods.md' first table: AMX
# not in use there) fit 0.42, which is why the class asks the probe, not only the flags. bf16-mixed scaled by the
# same ratio (not measured).
EFFICIENCY_AMX = {"bf16": 0.15, "bf16-mixed": 0.09}
# bf16 matmul FLOP/s a thread above which AMX's tiles are at work: 1.1 TFLOP/s a thread on the AMX Xeons above,
# 0.45-0.5 on AVX512-BF16 (an AMD EPYC, and the AMX-flagged Xeon whose AMX was not in use)
AMX_PROBE_PER_THREAD = 0.8e12
# How far the predicted tokens/s were from measured runs (predicted / measured - 1, in %), per class of CPU
# (``cpu_class``) and precision: stated with every plan (``Plan.notes``) so the figure reads as what it is.
# From docs/methods.md and docs/benchmarks.md, LoRA (and full) on the default model, 2 cores.
SPEED_ERROR = {
    ("amx", "bf16"): (-12, 16),  # two AMX Xeons, demo data, batch 8 (2026-12-07)
    ("amx", "fp32"): (34, 34),  # full fine-tuning on the first of them (benchmarks/methods.py, 2026-12-07)
    ("avx512_bf16", "bf16"): (-6, 3),  # an AMD EPYC, demo and 4-turn data (2026-12-06)
    ("avx512", "fp32"): (41, 55),  # a Xeon whose hypervisor hides AVX512-BF16 and AMX (2026-12-07)
    ("avx2", "fp32"): (17, 38),  # an AVX2-only AMD EPYC, batch 8 and batch 4 (2026-12-07)
}
METHOD_SPEED = {  # work beyond the FLOP count (small fp32 matmuls, weight materialisation), relative to lora
    "dora": 0.77, "qlora": 0.96, "ia3": 1.15, "prompt_tuning": 0.83, "prefix_tuning": 1.02, "p_tuning": 0.83,
    "adalora": 0.87, "loha": 0.63, "lokr": 0.66, "vera": 0.50,
}
BYTES = {"fp32": 4, "bf16": 2, "bf16-mixed": 4}


@dataclass
class Plan:
    method: str
    precision: str
    total_params: int
    trainable_params: int
    peak_memory_mb: float
    memory_breakdown_mb: dict
    tokens_per_second: float
    tokens_total: int
    steps: int
    wall_seconds: float
    cost: float | None
    fits: bool
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    calibration_runs: int = 0  # earlier runs on this machine its tokens/s comes from (0: the probe's estimate)

    def to_dict(self) -> dict:
        return asdict(self)


# --- machine probe -----------------------------------------------------------------------------------------------
def probe(force: bool = False) -> dict:
    """Measured matmul FLOP/s in fp32 and bf16 with the current thread count (cached per machine: CPU model and
    flags, threads)."""
    key = speed.machine_key()
    cache = paths.home() / "probe.json"
    data = json.loads(cache.read_text()) if cache.exists() else {}
    if key in data and not force:
        return data[key]
    out = {}
    m, k, n = 1024, 576, 1536
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        best = math.inf
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(10):
                a @ b
            best = min(best, (time.perf_counter() - t) / 10)
        out[name] = 2 * m * k * n / best
    out["bf16-mixed"] = out["bf16"]
    data[key] = out
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(data, indent=2))
    return out


def efficiency(precision: str, cls: str) -> float:
    """The share of the probed matmul FLOP/s a training step reaches in ``precision`` on a CPU of class ``cls``."""
    return EFFICIENCY_AMX.get(precision, EFFICIENCY[precision]) if cls == "amx" else EFFICIENCY[precision]


def cpu_class() -> str:
    """The class of CPU the speed factors and their measured errors are kept per: ``amx`` (the flags, and a bf16
    probe fast enough that AMX's tiles are at work), ``avx512_bf16``, ``avx512``, ``avx2`` or ``other``."""
    if cpu_has("amx_tile") and probe()["bf16"] / torch.get_num_threads() >= AMX_PROBE_PER_THREAD:
        return "amx"
    return next((flag for flag in ("avx512_bf16", "avx512", "avx2") if cpu_has(flag)), "other")


def speed_note(precision: str, cls: str) -> str:
    """What the predicted tokens/s is worth on a CPU of class ``cls``: the error measured there, or that none was."""
    err = SPEED_ERROR.get((cls, precision))
    if err is None:
        low, high = min(e[0] for e in SPEED_ERROR.values()), max(e[1] for e in SPEED_ERROR.values())
        return (f"tokens/s: not yet checked against a real run on this class of CPU ({cls}, {precision}); on the "
                f"classes that were, predictions ran from {-low}% low to {high}% high (docs/methods.md)")
    low, high = err
    spread = f"{low:+d}%" if low == high else f"{low:+d}% to {high:+d}%"
    return f"tokens/s: on this class of CPU ({cls}, {precision}) predictions were {spread} off measured runs " \
           "(docs/methods.md)"


# --- this machine's own runs -------------------------------------------------------------------------------------
CALIBRATION_RUNS = 5  # a calibrated prediction is the median of this many newest matching runs


@dataclass
class Calibration:
    """The FLOP rate earlier runs of a model reached on this machine (``speed.remember`` logs every run's), as a
    LoRA-equivalent rate (``METHOD_SPEED`` divided out), and the runs it comes from."""

    flops_per_second: float
    runs: list[dict]

    def note(self) -> str:
        """The plan's note: which runs its tokens/s comes from, what they measured and how far apart they were (the
        same for every method planned from the same runs, so ``slmtune plan`` prints it once)."""
        kinds = collections.Counter(f"{r['method']}, batch {r['batch_size']}" for r in self.runs)
        which = "; ".join(k + (f" ×{n}" if n > 1 else "") for k, n in kinds.items())
        tps = [r["tokens_per_second"] for r in self.runs]
        if len(self.runs) == 1:
            return f"tokens/s: from an earlier run of this model on this machine ({which}: {tps[0]:,.0f} tokens/s)"
        rates = [_lora_rate(r) for r in self.runs]
        return (f"tokens/s: from {len(self.runs)} earlier runs of this model on this machine ({which}: "
                f"{min(tps):,.0f}-{max(tps):,.0f} tokens/s, FLOP rates {100 * (max(rates) / min(rates) - 1):.0f}% "
                "apart)")


def calibration(precision: str, method: str, model_dir: Path, batch_size: int,
                gradient_checkpointing: bool) -> Calibration | None:
    """The FLOP rate of this model's earlier runs on this machine in ``precision``: of those with the same method,
    batch size and checkpointing where there are any, else the same method, else any method (None: no run).
    Other models' runs do not count: a larger model's matmuls reach a higher rate."""
    runs = [r for r in speed.records(speed.machine_key())
            if r.get("precision") == precision and r.get("model") == str(model_dir)]
    scopes = (
        lambda r: r.get("method") == method and r.get("batch_size") == batch_size
        and r.get("gradient_checkpointing") == gradient_checkpointing,
        lambda r: r.get("method") == method,
        lambda r: True,
    )
    for match in scopes:
        chosen = [r for r in runs if match(r)][-CALIBRATION_RUNS:]
        if chosen:
            return Calibration(statistics.median(_lora_rate(r) for r in chosen), chosen)
    return None


def _lora_rate(run: dict) -> float:
    """A logged run's FLOP rate as LoRA's would be (its method's ``METHOD_SPEED`` divided out)."""
    return run["flops_per_second"] / METHOD_SPEED.get(run["method"], 1.0)


# --- model and data facts -----------------------------------------------------------------------------------------
def _data_stats(cfg: TrainConfig, tokenizer) -> dict:
    d = cfg.data
    sources = [(d.train, 1.0)] if d.train else [(m.path, m.weight) for m in d.mix]
    if not sources or not all(Path(p).exists() for p, _ in sources):
        return {"examples": 1000, "mean": 256, "max": min(512, d.max_seq_length), "assumed": True}
    n, lens = 0.0, []
    for path, weight in sources:  # streamed: the first SAMPLE examples are tokenized, the rest only counted
        _, examples = stream_source(path, columns=d.columns or None, strict=d.strict)
        count = 0
        for e in examples:
            if count < SAMPLE:
                lens.append(min(encode_example(tokenizer, e).n_tokens, d.max_seq_length))
            count += 1
        n += count * weight
    return {"examples": int(n), "mean": sum(lens) / max(1, len(lens)), "max": max(lens, default=1),
            "assumed": False}


# --- the plan -----------------------------------------------------------------------------------------------------
def _memory_breakdown(cfg, method: Method, precision: str, c: dict, longest: int) -> dict[str, float]:
    """Peak memory by part, in MB: weights, trainable state, activations of the longest batch, logits, temporaries."""
    t = cfg.train
    wbytes = BYTES[precision]
    if method.quantized:
        qbits = cfg.method.bits
        weights = c["linear"] * (qbits / 8 * 1.06) + (c["total"] - c["linear"]) * wbytes
    else:
        weights = c["total"] * wbytes
    # grad, m, v (+ the weight itself when it is not part of the base)
    trainable_state = c["trainable"] * (12 if method.every_weight else 16)
    seq = longest + (cfg.method.num_virtual_tokens if method.virtual_inputs else 0)
    tokens_peak = t.batch_size * seq
    act_bytes = 2 if precision in ("bf16", "bf16-mixed") else 4
    per_token = c["layers"] * (ACTIVATION_ELEMS[0] * c["hidden"] + ACTIVATION_ELEMS[1] * c["intermediate"])
    if t.gradient_checkpointing:
        per_token *= GC_RSS_SHARE
    activations = tokens_peak * per_token * act_bytes
    if t.fused_loss and not method.prompt_learning:  # chunks of head logits; full: an fp32 head gradient too
        logits = CHUNK_ROWS * c["vocab"] * 4 * 2 + (c["vocab"] * c["hidden"] * 4 if method.every_weight else 0)
    else:
        logits = tokens_peak * c["vocab"] * 4 * LOGIT_COPIES
    adapted_fp32 = (c["linear"] - c["vocab"] * c["hidden"]) * 4  # the adapted layers (the head is not adapted)
    input_copy = tokens_peak * c["layers"] * (6 * c["hidden"] + c["intermediate"]) * 4  # fp32 inputs of adapted layers
    if t.gradient_checkpointing:
        input_copy *= GC_RSS_SHARE
    autocast = cfg.model.adapter_autocast and method.autocast
    if method.on_linear and precision == "bf16":
        adapter = input_copy * (AUTOCAST_TEMPS if autocast else ADAPTER_INPUT_COPY)
    elif method.on_linear and precision == "fp32":
        adapter = input_copy * FP32_ADAPTER_INPUTS
    else:
        adapter = 0.0
    w_factor, t_factor = METHOD_EXTRA.get(method.name, (0.0, 0.0))
    breakdown = {
        "runtime": RUNTIME_OVERHEAD_MB,
        "weights": weights / MB,
        "trainable_state": trainable_state / MB,
        "activations": activations / MB,
        "adapter_inputs": adapter / MB,
        "method_temporaries": (w_factor * adapted_fp32 + t_factor * input_copy) / MB,
        "logits": logits / MB,
    }
    return breakdown


def plan(config, *, method: str | None = None, memory_limit_mb: float | None = None,
         price_per_hour: float | None = None, nproc: int = 1, calibrated: bool = True) -> Plan:
    """Predict memory, speed, time and cost of ``config`` (optionally with another ``method``). Its tokens/s comes
    from earlier runs of the model on this machine where there are any (``calibration``; ``calibrated=False``
    ignores them), else from the matmul probe and the factor of this class of CPU."""
    cfg = coerce_config(config).model_copy(deep=True)
    if method is not None and method != cfg.method.name:
        cfg.method = type(cfg.method).model_validate({"name": method})
    m = get(cfg.method.name)
    model_dir = resolve(cfg.model.name)
    precision = resolve_precision(cfg.model.precision, m.precisions, model_dir)
    c = speed.counts(model_dir, cfg.method)
    data = _data_stats(cfg, load_tokenizer(model_dir))
    t = cfg.train

    breakdown = _memory_breakdown(cfg, m, precision, c, data["max"])
    peak = sum(breakdown.values())

    # speed
    flops = speed.flops_per_token(c, data["mean"], m.every_weight, t.gradient_checkpointing)
    cal = calibration(precision, m.name, model_dir, t.batch_size, t.gradient_checkpointing) if calibrated else None
    if cal:  # this machine's runs: no probe, no class factor
        rate, speed_said = cal.flops_per_second, cal.note()
    else:
        cls = cpu_class()
        rate, speed_said = efficiency(precision, cls) * probe()[precision], speed_note(precision, cls)
    tps = rate * METHOD_SPEED.get(m.name, 1.0) / flops * nproc
    steps_per_epoch = math.ceil(math.ceil(data["examples"] / (t.batch_size * nproc)) / t.grad_accum)
    steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)
    tokens_total = int(steps * t.batch_size * t.grad_accum * nproc * data["mean"])
    wall = tokens_total / tps + 10.0  # + model load and first-step warm-up
    limit = memory_limit_mb if memory_limit_mb is not None else available_memory_mb()
    fits = peak <= limit
    reason = "" if fits else f"needs ~{peak:,.0f} MB, {limit:,.0f} MB available"
    notes = ["data size assumed (no data.train file)"] if data["assumed"] else []
    notes.append(speed_said)
    if t.objective == "grpo":
        notes.append("train.objective grpo: only the training passes are modelled, not sampling rl.group_size "
                     "completions a prompt each step, which usually takes most of the time (docs/rft.md)")
    return Plan(method=m.name, precision=precision, total_params=c["total"], trainable_params=c["trainable"],
                peak_memory_mb=round(peak, 1), memory_breakdown_mb={k: round(v, 1) for k, v in breakdown.items()},
                tokens_per_second=round(tps, 1), tokens_total=tokens_total, steps=steps, wall_seconds=round(wall, 1),
                cost=round(wall / 3600 * price_per_hour, 4) if price_per_hour is not None else None, fits=fits,
                reason=reason, notes=notes, calibration_runs=len(cal.runs) if cal else 0)


def plan_methods(config, *, memory_limit_mb: float | None = None, price_per_hour: float | None = None,
                 methods: list[str] | None = None, calibrated: bool = True) -> list[Plan]:
    """Plans for every method (or ``methods``), those that fit first, fastest (cheapest) first."""
    plans = []
    for name in methods or list(METHODS):
        plans.append(plan(config, method=name, memory_limit_mb=memory_limit_mb, price_per_hour=price_per_hour,
                          calibrated=calibrated))
    return sorted(plans, key=lambda p: (not p.fits, p.wall_seconds))
