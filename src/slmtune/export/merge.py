"""``slmtune export merge RUN --out DIR``: fold a trained adapter into the base weights, save a plain model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from slmtune.artifacts import locate
from slmtune.methods import METHODS, Method, of_adapter
from slmtune.models.loading import load_base_model, load_tokenizer


class MergeError(ValueError):
    pass


def merge(run_or_adapter: str | Path, out: str | Path, precision: str = "fp32") -> Path:
    """Write a plain transformers model (safetensors + tokenizer + chat template) with the adapter merged in.

    QLoRA adapters merge into the dequantized (full-precision) base, the usual practice; methods that add virtual
    tokens instead of weight deltas (prompt/prefix/p-tuning) cannot be merged and say so.
    """
    from peft import PeftModel

    src = locate(run_or_adapter)
    out = Path(out)
    if src.model_dir is not None:  # full fine-tuning: already a plain model
        shutil.copytree(src.model_dir, out, dirs_exist_ok=True)
        return out
    if src.adapter_dir is None:
        raise MergeError(f"{run_or_adapter}: no adapter to merge (a base model is already plain)")
    m = _method_of(Path(run_or_adapter), src.adapter_dir)
    if m is not None and not m.mergeable:
        raise MergeError(f"a {m.name} adapter cannot be merged: {m.merge_note}")
    base = load_base_model(src.base_dir, precision)
    model = PeftModel.from_pretrained(base, str(src.adapter_dir))
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    load_tokenizer(src.tokenizer_dir).save_pretrained(str(out))
    return out


def _method_of(run: Path, adapter_dir: Path) -> Method | None:
    if (run / "config.yaml").exists():
        return METHODS.get(yaml.safe_load((run / "config.yaml").read_text())["method"]["name"])
    return of_adapter(json.loads((adapter_dir / "adapter_config.json").read_text()))
