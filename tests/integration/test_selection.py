"""Choosing the step: every checkpoint carries OpenAI's metrics (a full validation included), early stopping ends a
run when validation stops improving, and train.keep: best makes the best evaluation's checkpoint the run's adapter."""

from __future__ import annotations

import csv
import json

import pytest
from safetensors.torch import load_file

import slmtune
from slmtune.config import ConfigError
from slmtune.events import read_events
from tests.helpers import FACTS, chat_record, write_jsonl

OPENAI_METRICS = {"step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                  "full_valid_loss", "full_valid_mean_token_accuracy"}
OTHER = [("color", "green"), ("animal", "dog"), ("fruit", "pear"), ("city", "Rome")]  # not what training teaches


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sel")
    return {"train": str(write_jsonl(d / "train.jsonl", [chat_record(*FACTS[i % 4]) for i in range(32)])),
            "validation": str(write_jsonl(d / "val.jsonl", [chat_record(k, v) for k, v in OTHER]))}


def config(data, out, **train):
    # validation asks about other favourites than training teaches: it improves for a few steps, then gets worse
    return {"model": {"name": "tiny-llama", "precision": "fp32"}, "data": data,
            "method": {"name": "lora", "r": 8, "alpha": 16},
            "train": {"epochs": 10, "batch_size": 4, "learning_rate": 4e-2, "seed": 7, "eval_every": 2,
                      "save_every": 100, **train},
            "run": {"output": str(out)}}


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped") / "run"
    return out, slmtune.train(config(data, out, early_stopping={"patience": 2}, keep="best"))


def test_early_stopping_ends_the_run_and_keeps_the_best_checkpoint(stopped):
    run, r = stopped
    assert r.status == "succeeded" and r.stopped_early and r.global_step < r.total_steps
    assert 2 < r.best_step < r.global_step and r.kept_step == r.best_step
    messages = [e.message for e in read_events(run / "events.jsonl")]
    assert any(m.startswith(f"Early stopping at step {r.global_step}: valid_loss has not improved on ")
               and f"(step {r.best_step})" in m and "for 2 evaluations" in m for m in messages)
    assert f"Keeping the best evaluation: step {r.best_step} (valid_loss {r.valid_loss:.4f}); the last step was " \
           f"{r.global_step}" in messages
    # the adapter is the best step's checkpoint, and its figures are that checkpoint's
    best = run / "checkpoints" / f"step-{r.best_step}"
    kept = load_file(run / "adapter" / "adapter_model.safetensors")
    saved = load_file(best / "adapter_model.safetensors")
    assert kept.keys() == saved.keys() and all((kept[k] == saved[k]).all() for k in kept)
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["full_valid_loss"] == pytest.approx(r.valid_loss)
    assert json.loads((run / "result.json").read_text())["kept_step"] == r.best_step


def test_every_checkpoint_has_openais_metrics_with_a_full_validation(stopped):
    run, r = stopped
    ckpts = sorted((run / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert ckpts and f"step-{r.best_step}" in [c.name for c in ckpts]  # rotation keeps the best
    for c in ckpts:
        m = json.loads((c / "metrics.json").read_text())
        assert set(m) == OPENAI_METRICS and m["step"] == int(c.name.split("-")[1])
        assert m["full_valid_loss"] == m["valid_loss"] is not None and m["train_loss"] is not None
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
                             "full_valid_loss", "full_valid_mean_token_accuracy"]
    full = {int(row["step"]) for row in rows if row["full_valid_loss"]}
    assert {int(c.name.split("-")[1]) for c in ckpts} <= full


def test_without_keep_best_the_last_step_stays_the_adapter(data, tmp_path, stopped):
    _, first = stopped
    r = slmtune.train(config(data, tmp_path / "run", early_stopping={"patience": 2}))
    assert r.stopped_early and r.global_step == first.global_step and r.kept_step == r.global_step
    assert r.best_step == first.best_step and r.valid_loss > first.valid_loss  # the last evaluation, worse


def test_choosing_needs_validation_and_a_metric_the_objective_measures(data, tmp_path):
    no_val = {"train": data["train"]}
    with pytest.raises(ConfigError, match="train.early_stopping judges validation: give data.validation"):
        slmtune.train({**config(no_val, tmp_path / "a", early_stopping={"patience": 2}), "data": no_val})
    with pytest.raises(ConfigError, match="train.keep: best judges validation"):
        slmtune.train({**config(no_val, tmp_path / "b", keep="best"), "data": no_val})
    with pytest.raises(ConfigError, match="valid_reward_mean is not measured by objective sft"):
        slmtune.train(config(data, tmp_path / "c", early_stopping={"metric": "valid_reward_mean"}))
    with pytest.raises(ConfigError, match="accuracy is not measured by objective sft .*a scenario run also scores"):
        slmtune.train(config(data, tmp_path / "d", early_stopping={"metric": "accuracy"}))


# --- a scenario's metric, scored by generation at each evaluation -------------------------------------------------
SENTIMENT = [("great", "positive"), ("awful", "negative"), ("lovely", "positive"), ("boring", "negative"),
             ("superb", "positive"), ("dull", "negative")]
HELD_OUT = [("fine", "positive"), ("poor", "negative"), ("nice", "positive"), ("bad", "negative"),
            ("brilliant", "positive"), ("weak", "negative")]  # words training never shows


def classification(tmp_path, **train):
    rows = lambda pairs: [{"text": f"{w} film, {w} acting", "label": lab} for w, lab in pairs]  # noqa: E731
    return {"model": {"name": "tiny-llama", "precision": "fp32"}, "scenario": "classification",
            "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", rows(SENTIMENT * 4))),
                     "validation": str(write_jsonl(tmp_path / "val.jsonl", rows(HELD_OUT)))},
            "method": {"name": "lora", "r": 8, "alpha": 16},
            "train": {"epochs": 12, "batch_size": 4, "learning_rate": 2e-2, "seed": 7, "eval_every": 4,
                      "save_every": 100, **train},
            "run": {"output": str(tmp_path / "run")}}


def test_classification_stopping_on_accuracy_keeps_the_best_held_out_accuracy(tmp_path):
    r = slmtune.train(classification(tmp_path, early_stopping={"metric": "accuracy", "patience": 3}, keep="best"))
    run = tmp_path / "run"
    evals = [e.data for e in read_events(run / "events.jsonl") if e.type == "metrics" and "valid_accuracy" in e.data]
    accuracy = {d["step"]: d["valid_accuracy"] for d in evals}
    best = max(accuracy.values())
    first_best = min(step for step, a in accuracy.items() if a == best)  # a tie is not an improvement
    assert r.stopped_early and r.global_step < r.total_steps and best >= 0.5
    assert r.kept_step == r.best_step == first_best and r.valid_scored["valid_accuracy"] == best
    assert f"validation accuracy={best:.4f}" in next(e.message for e in read_events(run / "events.jsonl")
                                                   if e.type == "metrics" and e.data["step"] == first_best)
    checkpoint = json.loads((run / "checkpoints" / f"step-{first_best}" / "metrics.json").read_text())
    assert checkpoint["valid_accuracy"] == best and checkpoint["full_valid_loss"] is not None
    # the after-training evaluation scores the kept adapter: the best evaluation's accuracy, not the last one's
    assert json.loads((run / "scenario" / "tuned" / "scores.json").read_text())["accuracy"] == best


def test_a_scenario_names_the_metrics_it_scores(tmp_path):
    cfg = classification(tmp_path, early_stopping={"metric": "f1"})
    with pytest.raises(ConfigError, match="f1 is not measured by objective sft \\(use valid_loss, "
                                          "valid_mean_token_accuracy, accuracy, macro_f1"):
        slmtune.train(cfg)
