"""What a training step costs in FLOPs, and the speeds training runs measured on this machine.

The planner predicts tokens/s as a FLOP rate divided by the FLOPs a token costs. Before any run on a machine the
rate comes from a matmul probe times a factor fit per class of CPU, which is off by tens of percent between two
instances of the same class (an AVX2 EPYC: +17..+38% one week, -1% the next). So every finished single-process SFT
run appends the FLOP rate it reached to ``speeds.jsonl`` (:func:`log_path`), keyed by the machine, and the planner
predicts from this machine's own runs where it has them (``planner.calibration``). The FLOP count and the parameter
counts live here, not in the planner, because both sides need the same ones: the record is only worth what the
planner computes from it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

from slmtune import paths
from slmtune.config import MethodSection
from slmtune.methods import BuildContext, get
from slmtune.models.loading import linear_names, quiet_transformers

STEADY_AFTER = 2  # logged steps skipped before a run's rate counts (first-step warm-up, allocator growth)
MIN_STEADY = 2  # steady steps a run needs for its rate to be recorded
SPEED_LOG = "speeds.jsonl"
LOG_TAIL_BYTES = 1 << 20  # what a plan reads of the log: its newest ~3,000 runs, however long the log grows
NUMBERS = ("flops_per_second", "tokens_per_second", "batch_size")  # a record without these is skipped
STRINGS = ("machine", "model", "method", "precision")  # (the log is a file anyone may edit)


@functools.cache
def _cpu_identity() -> str:
    """CPU model and a digest of its flags, from /proc/cpuinfo (read once a process: they do not change)."""
    model, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{model}|flags={hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def machine_key() -> str:
    """What a measured speed is kept per: CPU model, a digest of its flags (two instances sold under one model name,
    e.g. "AMD EPYC", differ in AVX512-BF16), torch's thread count, and the GPU where one is used."""
    key = f"{_cpu_identity()}|threads={torch.get_num_threads()}"
    if torch.cuda.is_available():
        key += f"|gpu={torch.cuda.get_device_name()}"
    return key


# --- what a step costs --------------------------------------------------------------------------------------------
def _meta_model(model_dir: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    cfg = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg), cfg


_COUNTS: dict[tuple[str, str], dict] = {}  # (model folder, method section as JSON) -> counts


def counts(model_dir: Path, method_cfg: MethodSection) -> dict:
    """Exact parameter counts of the model with the method applied (built on the ``meta`` device: no weights
    loaded), and the shape figures the FLOP count needs. Kept per model folder and method section."""
    key = (str(model_dir), method_cfg.model_dump_json())
    if key not in _COUNTS:
        if len(_COUNTS) >= 256:  # a server plans many configs: a bounded memo, not a growing one
            _COUNTS.clear()
        _COUNTS[key] = _counts(model_dir, method_cfg)
    return dict(_COUNTS[key])


def _counts(model_dir: Path, method_cfg: MethodSection) -> dict:
    model, mcfg = _meta_model(model_dir)
    total = sum(p.numel() for p in model.parameters())
    lin = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    method = get(method_cfg.name)
    if getattr(method_cfg, "init", "default") != "default":
        method_cfg = method_cfg.model_copy(update={"init": "default"})  # pissa/olora need real weights (SVD)
    peft_config = method.build(method_cfg, BuildContext(linear_names=linear_names(model), total_steps=100))
    if peft_config is None:
        trainable = total
    else:
        from peft import get_peft_model

        try:
            pm = get_peft_model(model, peft_config)
            trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
        except Exception:  # noqa: BLE001 - a method that cannot initialise on meta: count LoRA-like
            trainable = int(0.03 * total)
    return {"total": total, "linear": lin, "trainable": trainable, "hidden": mcfg.hidden_size,
            "intermediate": getattr(mcfg, "intermediate_size", 4 * mcfg.hidden_size),
            "layers": mcfg.num_hidden_layers, "vocab": mcfg.vocab_size}


def flops_per_token(c: dict, tokens_mean: float, every_weight: bool, gradient_checkpointing: bool) -> float:
    """FLOPs of one trained token: 2 per weight forward (the head is a matmul even when tied to the embedding) plus
    attention over the mean row length; backward 2× forward where every weight trains, else the input gradients and
    the adapter's weight gradients; one more forward under gradient checkpointing."""
    n_mm = c["linear"] + c["vocab"] * c["hidden"]
    fwd = 2 * n_mm + 4 * c["layers"] * tokens_mean * c["hidden"]
    flops = 3 * fwd if every_weight else 2 * fwd + 6 * c["trainable"]
    return flops + (fwd if gradient_checkpointing else 0)


# --- the machine's measured speeds --------------------------------------------------------------------------------
def log_path() -> Path | None:
    """``$SLMTUNE_SPEED_LOG``, default ``$SLMTUNE_HOME/speeds.jsonl``; set to an empty string, none is kept or read."""
    value = os.environ.get("SLMTUNE_SPEED_LOG")
    if value == "":
        return None
    return Path(value).expanduser() if value else paths.home() / SPEED_LOG


def steady_rate(step_rates: list[float]) -> float | None:
    """A run's tokens/s: the median of its logged steps after the warm-up ones (None: too few to tell)."""
    steady = step_rates[STEADY_AFTER:]
    return statistics.median(steady) if len(steady) >= MIN_STEADY else None


def remember(cfg, method, model_dir: Path, tokens_mean: float, step_rates: list[float]) -> dict | None:
    """Append this run's FLOP rate to the machine's log (the engine calls it for single-process SFT runs); returns
    the record, or None when there was nothing to keep (too few steady steps, no log). ``cfg.model.precision`` is
    the resolved one."""
    path = log_path()
    tps = steady_rate(step_rates)
    if path is None or tps is None or tokens_mean <= 0:
        return None
    c = counts(model_dir, cfg.method)
    per_token = flops_per_token(c, tokens_mean, method.every_weight, cfg.train.gradient_checkpointing)
    record = {
        "time": round(time.time(), 1), "machine": machine_key(), "model": str(model_dir), "method": method.name,
        "precision": cfg.model.precision, "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
        "gradient_checkpointing": cfg.train.gradient_checkpointing, "tokens_mean": round(tokens_mean, 2),
        "tokens_per_second": round(tps, 2), "flops_per_second": round(tps * per_token),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:  # one write of one line: concurrent runs append whole records
        f.write(json.dumps(record) + "\n")
    return record


_READ: dict = {}  # the last parse of the log: (path, mtime, size, tail bytes) -> its records


def records(machine: str | None = None) -> list[dict]:
    """The log's newest records (its last ``LOG_TAIL_BYTES``; oldest first), of ``machine`` only when given;
    unreadable lines are skipped. Parsed again only when the file has changed (``slmtune plan`` asks once a
    method)."""
    path = log_path()
    if path is None or not path.exists():
        return []
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, LOG_TAIL_BYTES)
    if key not in _READ:
        _READ.clear()
        _READ[key] = _parse(path, st.st_size)
    return [r for r in _READ[key] if machine is None or r["machine"] == machine]


def _parse(path: Path, size: int) -> list[dict]:
    with path.open("rb") as f:
        f.seek(max(0, size - LOG_TAIL_BYTES))
        lines = f.read(LOG_TAIL_BYTES).decode(errors="replace").splitlines()
    if size > LOG_TAIL_BYTES:
        lines = lines[1:]  # the first is cut
    out = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not isinstance(r, dict) or not all(isinstance(r.get(k), (int, float)) for k in NUMBERS) \
                or not all(isinstance(r.get(k), str) for k in STRINGS):
            continue
        if r["flops_per_second"] > 0:
            out.append(r)
    return out
