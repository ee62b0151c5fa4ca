"""The `slmtune` command as a user runs it: exit codes, messages, Ctrl-C and --resume."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from slmtune.events import read_events
from tests.helpers import chat_record, run_cli, write_jsonl


def test_help_lists_the_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("train", "chat", "eval", "models", "data"):
        assert cmd in r.stdout


def test_data_validate_reports_file_line_field_and_exits_1(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [chat_record("a", "b"), chat_record("c", "d")])
    r = run_cli("data", "validate", str(good), "--model", "tiny-llama", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "2 valid examples" in r.stdout and "billed tokens for 2 epochs" in r.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl",
                      [chat_record("a", "b"), "{nope", {"messages": [{"role": "user", "content": "x"}]}])
    r = run_cli("data", "validate", str(bad), "--model", "tiny-llama")
    assert r.returncode == 1
    lines = [line for line in r.stdout.splitlines() if line.startswith(str(bad))]
    assert lines[0].startswith(f"{bad}:2: (json): invalid JSON")
    assert lines[1] == f"{bad}:3: messages: missing assistant turn: at least one assistant message is needed"
    r = run_cli("data", "validate", str(bad), "--model", "tiny-llama", "--json")
    report = json.loads(r.stdout)
    assert report["ok"] is False and len(report["problems"]) == 2 and report["stats"]["examples"] == 1


def test_train_config_errors_exit_2_naming_every_key(tiny_data, tmp_path):
    r = run_cli("train", "--model", "tiny-llama", "--data", str(tiny_data["train"]), "--output", str(tmp_path / "r"),
                "--set", "method.rank=4", "--set", "train.epochs=0")
    assert r.returncode == 2
    assert "method.rank: unknown key" in r.stderr and "train.epochs: Input should be greater than 0" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()  # nothing written for a bad config


def test_unknown_hub_model_exits_1_with_instructions(tiny_data, tmp_path):
    r = run_cli("train", "--model", "someorg/some-model", "--data", str(tiny_data["train"]), "-o", str(tmp_path / "r"))
    assert r.returncode == 1
    assert "huggingface-cli download someorg/some-model" in r.stderr


def test_train_from_flags_then_chat_and_eval(tiny_data, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "--model", "tiny-llama", "--data", str(tiny_data["train"]), "--validation",
                str(tiny_data["validation"]), "--method", "lora", "--epochs", "2", "--output", str(run),
                "--set", "train.learning_rate=0.02", "--set", "train.batch_size=4", "--set", "model.precision=fp32")
    assert r.returncode == 0, r.stderr
    assert "done 16 steps" in r.stdout
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["train"] == str(tiny_data["train"]) and saved["train"]["learning_rate"] == 0.02
    assert "eval step 8: valid_loss" in r.stderr  # periodic eval lines

    r = run_cli("chat", str(run), "--prompt", "What is your favorite city?", "--system", "You answer in one sentence.",
                "--max-new-tokens", "10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("My favorite")

    r = run_cli("eval", str(run), "--data", str(tiny_data["validation"]), "--compare-base", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["model"]["loss"] < res["base"]["loss"]
    assert res["model"]["mean_token_accuracy"] > res["base"]["mean_token_accuracy"]

    # interactive chat: two turns on stdin, then an empty line quits
    p = run_cli("chat", str(run), "--max-new-tokens", "8", input="What is your favorite color?\nAnd animal?\n\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("assistant> ") == 2

    # tools: a forced call printed as a JSON line; in a session its result is asked for and goes back
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 6}}, "required": ["city"]}}}]))
    r = run_cli("chat", str(run), "--prompt", "Weather in Oslo?", "--tools", str(tools), "--tool-choice",
                "get_weather", "--max-new-tokens", "120")
    assert r.returncode == 0, r.stderr
    call = json.loads(r.stdout.strip().splitlines()[-1])
    assert call["name"] == "get_weather" and isinstance(call["arguments"]["city"], str)
    p = run_cli("chat", str(run), "--tools", str(tools), "--tool-choice", "required", "--max-new-tokens", "120",
                input="Weather in Oslo?\nsunny\n\n")
    assert p.returncode == 0, p.stderr
    assert '"name": "get_weather"' in p.stdout and "result of get_weather> " in p.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('[{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]')
    r = run_cli("chat", str(run), "--prompt", "x", "--tools", str(bad))
    assert r.returncode == 2 and "tools[0].function.parameters: not a valid JSON Schema" in r.stderr


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(tiny_data, tmp_path):
    run = tmp_path / "run"
    big = write_jsonl(tmp_path / "big.jsonl", [chat_record("color", "blue")] * 400)
    exe = Path(sys.executable).parent / "slmtune"
    proc = subprocess.Popen(
        [str(exe), "train", "--model", "tiny-llama", "--data", str(big), "-o", str(run), "--epochs", "3",
         "--set", "train.batch_size=2", "--set", "model.precision=fp32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training is under way
        ev = run / "events.jsonl"
        if ev.exists() and any(e.type == "metrics" for e in read_events(ev)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"slmtune train --resume {run}" in err
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "adapter_model.safetensors").exists()
    step = int(ckpts[0].name.split("-")[1])
    assert 0 < step < 600
    assert not (run / "adapter").exists()

    r = run_cli("train", "--resume", str(run), "--set", "train.max_steps=" + str(step + 3))
    assert r.returncode == 0, r.stderr
    assert f"Resuming from checkpoints/step-{step}" in r.stderr
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((run / "result.json").read_text())["global_step"] == step + 3


def test_data_validate_reads_prompt_records_against_a_grader(tmp_path):
    grader = {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}",
              "reference": "{{ item.answer }}", "operation": "eq"}
    gfile = tmp_path / "grader.json"
    gfile.write_text(json.dumps(grader))
    rows = [{"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"},
            {"messages": [{"role": "user", "content": "3+3?"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "answer": "x"}]
    data = write_jsonl(tmp_path / "rl.jsonl", rows)
    r = run_cli("data", "validate", str(data), "--grader", str(gfile))
    assert r.returncode == 1
    lines = [line for line in r.stdout.splitlines() if line.startswith(str(data))]
    assert lines[0].startswith(f"{data}:2: (item): grader s: reference:") and "answer" in lines[0]
    assert lines[1].startswith(f"{data}:3: messages[1].role: the last message must be the user's")
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(yaml.safe_dump({"rl": {"grader": grader}}))
    r = run_cli("data", "validate", str(write_jsonl(tmp_path / "ok.jsonl", rows[:1])), "--grader", str(cfg))
    assert r.returncode == 0 and "1 valid prompts" in r.stdout
    gfile.write_text(json.dumps(grader | {"operation": "regex"}))
    assert run_cli("data", "validate", str(data), "--grader", str(gfile)).returncode == 2
