"""Shared fixtures: small chat data sets and configs for the tiny seeded models.

Tiny models are built into the normal cache ($SLMTUNE_HOME, default ~/.slmtune) on first use, in ~1 s;
the real default model is fetched there once (tests marked real_model).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import FACTS, chat_record, write_jsonl

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    train = [chat_record(*FACTS[i % len(FACTS)]) for i in range(32)]
    val = [chat_record(k, v) for k, v in FACTS]
    return {"train": write_jsonl(d / "train.jsonl", train), "validation": write_jsonl(d / "val.jsonl", val)}


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    """A raw config dict: tiny-llama, LoRA, 24 steps, fp32 (exact comparisons need one precision)."""

    def make(**sections) -> dict:
        cfg = {
            "model": {"name": "tiny-llama", "precision": "fp32"},
            "data": {"train": str(tiny_data["train"]), "validation": str(tiny_data["validation"])},
            "method": {"name": "lora", "r": 8, "alpha": 16},
            "train": {"epochs": 3, "batch_size": 4, "learning_rate": 2e-2, "seed": 7},
            "run": {"output": str(tmp_path / "run")},
        }
        for key, val in sections.items():
            cfg.setdefault(key, {}).update(val)
        return cfg

    return make
