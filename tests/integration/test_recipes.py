"""Every recipe in examples/recipes/ runs, so none rots: each trains as shipped except for its model (swapped for the
tiny model of the same architecture: tiny-phi3 for Phi-3 recipes, tiny-llama otherwise), its scenario data (tiny
records of the scenario's format when the fetched set is not here), a 2-step budget and a max_seq_length that fits
the tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import slmtune
from slmtune.config import load_config
from slmtune.training.distributed import free_port
from tests.integration.test_scenarios import RECORDS

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))


def test_there_is_a_recipe_per_common_case():
    names = {p.stem for p in RECIPES}
    assert {"phi3-lora", "phi3-qlora", "phi3-dora", "dpo", "zero2-2proc"} <= names
    assert {f"scenario-{s}" for s in RECORDS} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_with_its_model_swapped(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name repository paths (examples/demo/...) as the docs run them
    shipped = load_config(path)  # loads as shipped: every key valid
    raw = yaml.safe_load(path.read_text())
    raw["model"] = {**raw["model"], "name": "tiny-phi3" if "Phi-3" in shipped.model.name else "tiny-llama",
                    "precision": "fp32"}
    if shipped.scenario.name:  # fetched data or not, the scenario's small records (not whatever this machine has)
        data = tmp_path / "records.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[shipped.scenario.name]))
        raw["data"] = {**raw["data"], "train": str(data), "validation": str(data)}
    # the tiny models' byte-level tokenizer (484 tokens) spells the same text in more tokens than the real ones
    raw["data"] = {**raw["data"], "max_seq_length": 2048}
    if shipped.scenario.name:
        # the before/after metric: tests/integration/test_scenarios
        raw["scenario"] = {**raw["scenario"], "eval": False}
    raw["train"] = {**raw["train"], "max_steps": 2, "batch_size": 2}
    if shipped.distributed.nproc > 1:
        raw["distributed"] = {**raw["distributed"], "master_port": free_port()}
    raw["run"] = {"output": str(tmp_path / "run")}
    result = slmtune.train(raw)
    assert result.status == "succeeded" and result.global_step == 2
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"]["name"] == shipped.method.name and saved["train"]["objective"] == shipped.train.objective
