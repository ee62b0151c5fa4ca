"""A new user's first hour, as they would type it: the data they already have (Alpaca in Parquet, chat JSONL with
ids, mixed with weights), the flags they know from other tools on plan / train / eval, --dry-run, and a quiet
terminal."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

import slmtune
from slmtune.events import read_events
from tests.helpers import FACTS, chat_record, run_cli, write_jsonl


def alpaca_parquet(path, n: int):
    import datasets

    rows = [{"instruction": f"What is your favorite {k}?", "input": "", "output": f"My favorite {k} is {v}.",
             "source": "export-7"} for k, v in (FACTS * n)[:n]]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def test_a_weighted_mix_of_a_parquet_alpaca_set_and_chat_jsonl_with_ids_trains(tmp_path):
    par = alpaca_parquet(tmp_path / "alpaca.parquet", 8)
    chat = write_jsonl(tmp_path / "chat.jsonl", [{**chat_record(*FACTS[i % 4]), "id": i} for i in range(10)])
    cfg = {"model": {"name": "tiny-llama", "precision": "fp32"},
           "data": {"mix": [{"path": str(par), "weight": 2}, {"path": str(chat), "weight": 0.5}]},
           "method": {"name": "lora", "r": 4}, "train": {"max_steps": 2, "batch_size": 4, "seed": 3},
           "run": {"output": str(tmp_path / "run")}}
    result = slmtune.train(cfg)
    assert result.status == "succeeded" and result.global_step == 2
    msgs = [e.message for e in read_events(tmp_path / "run" / "events.jsonl")]
    assert any(m.startswith("Data: 21 training examples") for m in msgs), msgs  # 2 × 8 + half of 10
    assert f"Data mix: {par} ×2 (8 → 16), {chat} ×0.5 (10 → 5)" in msgs
    assert f"{par}: ignored key(s) not part of the data format: source (8 records) (data.strict: true makes them " \
           "errors)" in msgs
    assert any(m.startswith(f"{chat}: ignored key(s) not part of the data format: id (10 records)") for m in msgs)


def test_plan_takes_the_flags_train_takes(tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", [chat_record(*FACTS[i % 4]) for i in range(16)])
    r = run_cli("plan", "--model", "tiny-llama", "--data", str(data), "--method", "lora", "--max-steps", "5",
                "--batch-size", "2", "--lora-r", "4", "--json")
    assert r.returncode == 0, r.stderr
    plans = json.loads(r.stdout)
    assert [p["method"] for p in plans] == ["lora"] and plans[0]["steps"] == 5
    # the rank reached the method: fewer trainable parameters than the default r 16
    r16 = json.loads(run_cli("plan", "--model", "tiny-llama", "--data", str(data), "--method", "lora",
                             "--json").stdout)
    assert plans[0]["trainable_params"] * 4 == r16[0]["trainable_params"]


def test_train_dry_run_prints_the_resolved_config_and_plan_and_trains_nothing(tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", [chat_record(*FACTS[i % 4]) for i in range(16)])
    out = tmp_path / "run"
    r = run_cli("train", "--model", "tiny-llama", "--data", str(data), "--max-steps", "3", "--learning-rate", "5e-4",
                "--batch-size", "2", "--lora-r", "8", "-o", str(out), "--dry-run")
    assert r.returncode == 0, r.stderr
    config_text = r.stdout.split("Resolved config")[1].split("Plan for")[0]
    cfg = yaml.safe_load(config_text[config_text.index("\n"):])
    assert cfg["train"]["max_steps"] == 3 and cfg["train"]["learning_rate"] == 5e-4
    assert cfg["train"]["batch_size"] == 2 and cfg["method"]["r"] == 8 and cfg["model"]["name"] == "tiny-llama"
    assert "Plan for lora" in r.stdout and "3 steps" in r.stdout and "nothing was trained" in r.stdout
    assert not out.exists()


def test_eval_takes_model_and_validation_like_train(tmp_path):
    data = write_jsonl(tmp_path / "v.jsonl", [chat_record(*FACTS[i % 4]) for i in range(4)])
    r = run_cli("eval", "--model", "tiny-llama", "--validation", str(data), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"]["examples"] == 4
    r = run_cli("eval", "tiny-llama", "--model", "tiny-llama", "--data", str(data))
    assert r.returncode == 2 and "not both" in r.stderr


def test_data_validate_names_the_layout_and_format_and_the_ignored_keys(tmp_path):
    par = alpaca_parquet(tmp_path / "a.parquet", 6)
    r = run_cli("data", "validate", str(par), "--model", "tiny-llama")
    assert r.returncode == 0, r.stderr
    assert f"{par} (Parquet; format: alpaca (6)): 6 valid examples" in r.stdout
    assert "ignored key(s) not part of the data format: source (6 records)" in r.stderr
    r = run_cli("data", "validate", str(par), "--model", "tiny-llama", "--strict")
    assert r.returncode == 1 and f"{par}: row 1: source: unknown key (data.strict is on)" in r.stdout
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"q": "2+2?", "a": "4"}])
    r = run_cli("data", "validate", str(qa), "--model", "tiny-llama", "--column", "q=prompt", "--column",
                "a=completion")
    assert r.returncode == 0 and "format: completion (1)" in r.stdout


def test_third_party_noise_is_filtered_unless_verbose():
    """bitsandbytes' "kernels-community" message (it fires at import on CPUs with AVX512-BF16) is dropped in every
    process that imports slmtune; SLMTUNE_VERBOSE=1 (what `slmtune -v` sets) lets it through."""
    code = ("import logging, slmtune; logging.getLogger('bitsandbytes.backends.cpu.ops').warning("
            "'Failed to load CPU gemm_4bit_forward from kernels-community: %s', 'no kernels'); "
            "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('a real warning')")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "kernels-community" not in quiet.stderr and "a real warning" in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "SLMTUNE_VERBOSE": "1"})
    assert "kernels-community" in loud.stderr
