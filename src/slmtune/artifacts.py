"""The run directory layout, shared by training (writes it) and inference/evaluation/export (read it); and what a
path a user gives points at (:func:`locate`, :func:`is_onnx_dir`), below both inference and export so that neither
imports the other for it.

    RUN/config.yaml            the fully resolved TrainConfig
    RUN/adapter/               plain PEFT adapter + tokenizer (adapter methods), or
    RUN/model/                 plain transformers model + tokenizer (full fine-tuning)
    RUN/checkpoints/step-N/    adapter/model weights + optimizer, scheduler, RNG and trainer state
    RUN/metrics.csv            OpenAI result-file columns
    RUN/events.jsonl           every event
    RUN/result.json            summary of the finished (or interrupted) run
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from slmtune.models.registry import resolve

CHECKPOINT_PREFIX = "step-"
RESULT_FILE = "result.json"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of a run's complete checkpoints, oldest first."""
    out = []
    ckpt_dir = Path(run_dir) / "checkpoints"
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").exists():
                try:
                    out.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
                except ValueError:
                    continue
    return sorted(out)


@dataclass
class Source:
    """What a user pointed at, resolved to a base model folder and an optional adapter or full model."""

    base: str  # registry id or path of the base model
    base_dir: Path
    adapter_dir: Path | None = None
    model_dir: Path | None = None  # a fully fine-tuned model (replaces base weights)
    quantize_bits: int | None = None  # the adapter was trained on a bitsandbytes-quantized base (qlora)

    @property
    def weights_dir(self) -> Path:
        return self.model_dir or self.base_dir

    @property
    def tokenizer_dir(self) -> Path:
        for d in (self.adapter_dir, self.model_dir):
            if d is not None and (d / "tokenizer_config.json").exists():
                return d
        return self.base_dir


def _latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def _base_from_adapter(adapter_dir: Path) -> str:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path")
    return base


def locate(path_or_id: str | Path) -> Source:
    """Find out what ``path_or_id`` is: a run directory, an adapter/checkpoint folder, a model folder or an id."""
    p = Path(path_or_id).expanduser()
    if p.is_dir() and (p / "config.yaml").exists() and not (p / "config.json").exists():
        saved = yaml.safe_load((p / "config.yaml").read_text())
        base = saved["model"]["name"]
        base_dir = resolve(base)
        bits = saved["method"].get("bits") if saved["method"]["name"] == "qlora" else None
        if (p / "adapter" / "adapter_config.json").exists():
            return Source(base, base_dir, adapter_dir=p / "adapter", quantize_bits=bits)
        if (p / "model" / "config.json").exists():
            return Source(base, base_dir, model_dir=p / "model")
        ckpt = _latest_checkpoint(p)
        if ckpt is not None:
            if (ckpt / "adapter_config.json").exists():
                return Source(base, base_dir, adapter_dir=ckpt, quantize_bits=bits)
            return Source(base, base_dir, model_dir=ckpt)
        raise FileNotFoundError(f"{p}: run directory has no adapter/, model/ or checkpoint yet")
    if p.is_dir() and (p / "adapter_config.json").exists():
        base = _base_from_adapter(p)
        return Source(base, resolve(base), adapter_dir=p)
    return Source(str(path_or_id), resolve(path_or_id))


def is_onnx_dir(path: str | Path) -> bool:
    """A folder written by ``slmtune export onnx`` (ONNX Runtime GenAI layout)."""
    p = Path(path)
    return p.is_dir() and (p / "model.onnx").exists() and (p / "genai_config.json").exists()
