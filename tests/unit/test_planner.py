"""The planner's predictions move the way the physics says, and its parameter counts are exact."""

import pytest

import slmtune
from slmtune.planner import plan, plan_methods


@pytest.fixture
def cfg(tiny_config):
    return tiny_config()


def test_trainable_parameter_count_matches_a_real_run(cfg, tmp_path):
    from slmtune.events import read_events

    for method in ("lora", "ia3", "full"):
        c = {**cfg, "method": {"name": method}, "train": {**cfg["train"], "max_steps": 1},
             "run": {"output": str(tmp_path / method)}}
        predicted = plan(c).trainable_params
        slmtune.train(c)
        real = [e for e in read_events(tmp_path / method / "events.jsonl") if "trainable_params" in e.data][0]
        assert predicted == real.data["trainable_params"], method


def test_memory_grows_with_batch_and_shrinks_with_checkpointing_and_quantization(cfg):
    small = plan(cfg)
    big = plan({**cfg, "train": {**cfg["train"], "batch_size": 32}})
    act = "activations"
    assert big.memory_breakdown_mb[act] == pytest.approx(8 * small.memory_breakdown_mb[act], rel=0.05)
    gc = plan({**cfg, "train": {**cfg["train"], "gradient_checkpointing": True}})
    assert gc.memory_breakdown_mb["activations"] < small.memory_breakdown_mb["activations"]
    assert gc.tokens_per_second < small.tokens_per_second  # recomputation costs time
    q = plan(cfg, method="qlora")
    assert q.memory_breakdown_mb["weights"] < small.memory_breakdown_mb["weights"]
    full = plan(cfg, method="full")
    assert full.trainable_params == full.total_params and full.tokens_per_second < small.tokens_per_second


def test_ranking_puts_what_does_not_fit_last_with_a_reason(cfg):
    plans = plan_methods(cfg, memory_limit_mb=10_000, price_per_hour=2.0, methods=["lora", "full", "ia3"])
    assert all(p.fits for p in plans) and plans == sorted(plans, key=lambda p: p.wall_seconds)
    assert all(p.cost == pytest.approx(p.wall_seconds / 3600 * 2.0, abs=1e-4) for p in plans)
    tight = plan_methods(cfg, memory_limit_mb=1, methods=["lora"])
    assert not tight[0].fits and tight[0].reason.startswith("needs ~")


def test_plan_cli_prints_every_method(tmp_path):
    import json

    import yaml

    from tests.helpers import run_cli

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "tiny-llama"}, "train": {"epochs": 1}}))
    r = run_cli("plan", str(path), "--json", "--price-per-hour", "1")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {p["method"] for p in rows} == set(slmtune.methods.METHODS)
    assert all(p["peak_memory_mb"] > 0 and p["tokens_per_second"] > 0 for p in rows)
