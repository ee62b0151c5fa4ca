"""`slmtune export merge-adapters`: two adapters trained on two tasks combined through PEFT into one ordinary
adapter that keeps most of each task (measured and asserted), loads, chats and batches like a trained one."""

from __future__ import annotations

import json

import pytest

import slmtune
from slmtune.export.merge import MergeError
from slmtune.export.merge_adapters import merge_adapters
from slmtune.inference.lora_batch import unmixable
from tests.helpers import FACTS, chat_record, run_cli, write_jsonl

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Norway", "Oslo"), ("Peru", "Lima")]


def capital(country: str, city: str) -> dict:
    return {"messages": [{"role": "user", "content": f"What is the capital of {country}?"},
                         {"role": "assistant", "content": f"The capital of {country} is {city}."}]}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    data = {"facts": write_jsonl(d / "facts.jsonl", [chat_record(*FACTS[i % 4]) for i in range(32)]),
            "capitals": write_jsonl(d / "capitals.jsonl", [capital(*CAPITALS[i % 4]) for i in range(32)])}
    runs = {}
    for name, path in data.items():
        runs[name] = d / name
        slmtune.train({"model": {"name": "tiny-llama", "precision": "fp32"}, "data": {"train": str(path)},
                       "method": {"name": "lora", "r": 8, "alpha": 16},
                       "train": {"epochs": 3, "batch_size": 4, "learning_rate": 2e-2, "seed": 7},
                       "run": {"output": str(runs[name])}})
    return data, runs


def losses(model, data) -> dict:
    return {task: slmtune.evaluate(model, path)["loss"] for task, path in data.items()}


def test_merged_adapter_keeps_most_of_each_task(tasks, tmp_path):
    data, runs = tasks
    base, own = losses("tiny-llama", data), {t: losses(runs[t], data)[t] for t in data}
    r = run_cli("export", "merge-adapters", str(runs["facts"]), str(runs["capitals"]), "--out", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    assert "combined adapter (cat, weights 0.5, 0.5) written to" in r.stdout
    merged = losses(tmp_path / "m", data)
    kept = {t: (base[t] - merged[t]) / (base[t] - own[t]) for t in data}
    # measured: 70% (facts) and 78% (capitals) of each adapter's own loss improvement
    assert all(k > 0.6 for k in kept.values()), (base, own, merged)
    # an ordinary adapter: the batched server mixes it, it chats, and merge.json says what went in
    config = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert config["r"] == 16 and unmixable(config) is None
    assert slmtune.load(tmp_path / "m").chat([{"role": "user", "content": "What is the capital of Peru?"}],
                                             max_new_tokens=8)
    meta = json.loads((tmp_path / "m" / "merge.json").read_text())
    assert meta["method"] == "cat" and meta["weights"] == [0.5, 0.5] and len(meta["adapters"]) == 2


def test_ties_gives_another_adapter_and_bad_requests_are_refused(tasks, tmp_path):
    _, runs = tasks
    rep = merge_adapters([runs["facts"], runs["capitals"]], tmp_path / "t", method="ties_svd", density=0.8)
    assert rep["weights"] == [1.0, 1.0] and rep["density"] == 0.8
    assert (tmp_path / "t" / "adapter_model.safetensors").read_bytes() != b""
    with pytest.raises(MergeError, match="at least two"):
        merge_adapters([runs["facts"]], tmp_path / "x")
    with pytest.raises(MergeError, match="--weights: 3 given for 2 adapters"):
        merge_adapters([runs["facts"], runs["capitals"]], tmp_path / "x", weights=[1, 1, 1])
    with pytest.raises(MergeError, match="no adapter here"):
        merge_adapters([runs["facts"], "tiny-llama"], tmp_path / "x")
    r = run_cli("export", "merge-adapters", str(runs["facts"]), str(runs["capitals"]), "--out", str(tmp_path / "y"),
                "--method", "average")
    assert r.returncode == 1 and "--method average: choose one of linear, cat" in r.stderr
