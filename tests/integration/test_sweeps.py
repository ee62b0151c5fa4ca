"""`slmtune sweep`: a grid over learning rate × rank on a tiny model, locally (each trial an ordinary run folder, the
best picked by validation loss, resumable) and on a real two-node local Ray cluster, which picks the same best."""

from __future__ import annotations

import csv
import json
import os

import pytest
import yaml

from slmtune.config import ConfigError, load_config
from slmtune.sweeps import parse_grid, parse_search, plan_trials, run_sweep
from tests.helpers import FACTS, chat_record, run_cli, write_jsonl

GRID = ["train.learning_rate=0.002,0.02", "method.r=4,8"]


@pytest.fixture(scope="module")
def base_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweepdata")
    train = write_jsonl(d / "train.jsonl", [chat_record(*FACTS[i % 4]) for i in range(16)])
    val = write_jsonl(d / "val.jsonl", [chat_record(k, v) for k, v in FACTS])
    cfg = {"model": {"name": "tiny-llama", "precision": "fp32"},
           "data": {"train": str(train), "validation": str(val)},
           "method": {"name": "lora", "r": 8, "alpha": 16},
           "train": {"epochs": 2, "batch_size": 4, "seed": 7}}
    path = d / "lora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def local(base_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid"
    r = run_cli("sweep", str(base_config), *[a for g in GRID for a in ("--grid", g)], "-o", str(out))
    return out, r


def valid_losses(out):
    return {int(p.name.split("-")[1]): json.loads((p / "result.json").read_text())["valid_loss"]
            for p in sorted(out.glob("trial-*"))}


def test_a_local_grid_trains_every_trial_as_a_run_and_picks_the_best(local):
    out, r = local
    assert r.returncode == 0, r.stderr
    losses = valid_losses(out)
    assert len(losses) == 4
    best = min(losses, key=losses.get)
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["best"] == best and sweep["metric"] == "valid_loss" and sweep["mode"] == "min"
    assert [t["overrides"] for t in sweep["trials"]] == [
        {"train.learning_rate": lr, "method.r": rank} for lr in (0.002, 0.02) for rank in (4, 8)]
    # each trial is an ordinary run with its values; best.yaml is the winner's config and trains as it is
    for t in sweep["trials"]:
        cfg = load_config(out / f"trial-{t['index']:03d}" / "config.yaml")
        assert cfg.train.learning_rate == t["overrides"]["train.learning_rate"]
        assert cfg.method.r == t["overrides"]["method.r"]
        assert (out / f"trial-{t['index']:03d}" / "adapter" / "adapter_config.json").exists()
    assert load_config(out / "best.yaml").method.r == sweep["trials"][best]["overrides"]["method.r"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [float(row["valid_loss"]) for row in rows] == pytest.approx([losses[i] for i in range(4)], rel=1e-5)
    assert f"{best} ★" in r.stdout and f"best: trial {best} (valid_loss {losses[best]:.4f})" in r.stdout


def test_resume_trains_only_what_did_not_finish(local, base_config):
    out, _ = local
    stamps = {i: os.stat(out / f"trial-{i:03d}" / "events.jsonl").st_mtime_ns for i in range(3)}
    (out / "trial-003" / "result.json").unlink()  # as if the sweep stopped during the last trial
    raw = yaml.safe_load(base_config.read_text())
    with pytest.raises(ConfigError, match="not empty; run again with --resume"):
        run_sweep(raw, out, grid=[parse_grid(g) for g in GRID])
    result = run_sweep(raw, out, grid=[parse_grid(g) for g in GRID], resume=True)
    assert [t.status for t in result.trials] == ["succeeded"] * 4
    assert {i: os.stat(out / f"trial-{i:03d}" / "events.jsonl").st_mtime_ns for i in range(3)} == stamps
    assert (out / "trial-003" / "result.json").exists()
    with pytest.raises(ConfigError, match="--resume with other dimensions"):
        run_sweep(raw, out, grid=[parse_grid("method.r=2,4")], resume=True)


def test_dimensions_and_bad_requests():
    assert parse_grid("method.r=8,16").values == [8, 16]
    lr = parse_search("train.learning_rate=1e-5:1e-3:log")
    draws = plan_trials([parse_grid("method.r=8,16")], [lr], 6, seed=3)
    assert [d["method.r"] for d in draws] == [8, 16, 8, 16, 8, 16]
    assert all(1e-5 <= d["train.learning_rate"] <= 1e-3 for d in draws)
    assert draws == plan_trials([parse_grid("method.r=8,16")], [lr], 6, seed=3)  # seeded: a resume finds them
    assert isinstance(plan_trials([], [parse_search("method.r=4:32")], 3, 0)[0]["method.r"], int)
    for bad, msg in (("train.learning_rate=1e-3:1e-5", "low < high"), ("lr=1:2", "section.key"),
                     ("train.learning_rate=0:1:log", "log scale needs low > 0")):
        with pytest.raises(ConfigError, match=msg):
            parse_search(bad)
    with pytest.raises(ConfigError, match="needs --trials"):
        run_sweep({}, "/nonexistent", search=[lr])


def test_a_scenario_sweep_picks_by_the_scenarios_own_metric(tmp_path):
    from tests.integration.test_selection import classification

    cfg = classification(tmp_path)
    cfg["train"] |= {"epochs": 4, "eval_every": 0}
    cfg.pop("run")
    result = run_sweep(cfg, tmp_path / "sweep", grid=[parse_grid("train.learning_rate=0.0005,0.02")],
                       metric="accuracy")
    assert result.mode == "max" and all(t.status == "succeeded" for t in result.trials)
    scores = [json.loads((tmp_path / "sweep" / f"trial-{i:03d}" / "scenario" / "tuned" / "scores.json").read_text())
              for i in range(2)]
    assert [t.metric for t in result.trials] == [s["accuracy"] for s in scores]  # the after-training evaluation's
    assert result.best == max(range(2), key=lambda i: (scores[i]["accuracy"], -i))
    with pytest.raises(ConfigError, match="--metric accuracy: choose one of valid_loss, valid_mean_token_accuracy"):
        run_sweep({k: v for k, v in cfg.items() if k != "scenario"}, tmp_path / "other",
                  grid=[parse_grid("method.r=4,8")], metric="accuracy")


def test_the_cli_refuses_asha_without_ray_and_unknown_keys(base_config, tmp_path):
    r = run_cli("sweep", str(base_config), "--grid", "method.r=4,8", "--asha", "-o", str(tmp_path / "a"))
    assert r.returncode == 2 and "--asha stops trials early through Ray Tune" in r.stderr
    r = run_cli("sweep", str(base_config), "--grid", "train.learnin_rate=1,2", "-o", str(tmp_path / "b"))
    assert r.returncode == 2 and "train.learnin_rate: unknown key" in r.stderr


def test_the_same_sweep_on_a_two_node_ray_cluster_picks_the_same_best(local, base_config, tmp_path):
    ray = __import__("ray") if os.environ.get("CI") else pytest.importorskip("ray", reason="pip install 'slmtune[ray]'")
    from tests.service.test_ray import Cluster

    out, _ = local
    cluster = Cluster(tmp_path)
    try:
        cluster.start("head", {"head": 1}, head=True)
        cluster.start("second", {"second": 1})
        raw = yaml.safe_load(base_config.read_text())
        result = run_sweep(raw, tmp_path / "ray", grid=[parse_grid(g) for g in GRID], ray_address=cluster.address,
                           cpus_per_trial=1)
        assert [t.status for t in result.trials] == ["succeeded"] * 4
        assert result.best == json.loads((out / "sweep.json").read_text())["best"]
        assert len({t.node for t in result.trials}) == 2  # spread over both nodes
        ray_losses = valid_losses(tmp_path / "ray")
        assert ray_losses == pytest.approx(valid_losses(out), rel=1e-4)  # the same runs, wherever they ran
    finally:
        ray.shutdown()
        cluster.stop()
