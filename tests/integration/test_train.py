"""Training the tiny seeded models end to end: artifacts, metrics, reproducibility, resume, plain-PEFT loading."""

import csv
import json
import shutil

import pytest
import torch

import slmtune
from slmtune.artifacts import list_checkpoints
from slmtune.data.formats import DataError
from slmtune.events import METRICS_CSV_COLUMNS, read_events
from slmtune.training.run import RunDirError


def train_losses(run_dir) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(fh) if r["train_loss"]}


def test_lora_run_writes_every_artifact_and_the_loss_falls(tiny_config, tmp_path):
    result = slmtune.train(tiny_config())
    run = tmp_path / "run"
    assert result.status == "succeeded" and result.global_step == result.total_steps == 24
    for name in ("config.yaml", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "adapter/tokenizer_config.json", "metrics.csv", "events.jsonl", "result.json"):
        assert (run / name).exists(), name
    assert [s for s, _ in list_checkpoints(run)] == [8, 16, 24]  # one per epoch
    # config.yaml is fully resolved and loads back
    assert slmtune.load_config(run / "config.yaml").model.precision == "fp32"

    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == METRICS_CSV_COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(1, 25))
    assert [r["step"] for r in rows if r["valid_loss"]] == ["8", "16", "24"]
    losses = train_losses(run)
    assert losses[24] < losses[1] - 0.5
    valid = [float(r["valid_loss"]) for r in rows if r["valid_loss"]]
    assert valid[-1] < valid[0]
    assert result.valid_loss == pytest.approx(valid[-1], rel=1e-5)

    metrics = [e for e in read_events(run / "events.jsonl") if e.type == "metrics"]
    for key in ("step", "total_steps", "train_loss", "train_mean_token_accuracy", "learning_rate",
                "tokens_per_second"):
        assert key in metrics[0].data, key
    assert {"valid_loss", "valid_mean_token_accuracy"} <= metrics[-1].data.keys()
    assert metrics[-1].data["valid_mean_token_accuracy"] > metrics[0].data["train_mean_token_accuracy"]


def test_adapter_loads_with_plain_peft_and_gives_the_same_logits(tiny_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from slmtune.models.registry import resolve

    slmtune.train(tiny_config())
    ours = slmtune.load(tmp_path / "run")
    base = AutoModelForCausalLM.from_pretrained(str(resolve("tiny-llama")))
    plain = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter")).eval()
    ids = torch.tensor([[1, 5, 9, 30, 2, 7]])
    with torch.no_grad():
        a = ours.model(input_ids=ids).logits
        b = plain(input_ids=ids).logits
        untuned = base.get_base_model()(input_ids=ids).logits if hasattr(base, "get_base_model") else None
    torch.testing.assert_close(a, b)
    del untuned
    # the tuned model answers what it was taught
    assert ours.chat([{"role": "system", "content": "You answer in one sentence."},
                      {"role": "user", "content": "What is your favorite color?"}], max_new_tokens=12).startswith("My")


def test_same_config_and_seed_give_the_same_loss_curve(tiny_config, tmp_path):
    a = slmtune.train(tiny_config(run={"output": str(tmp_path / "a")}))
    b = slmtune.train(tiny_config(run={"output": str(tmp_path / "b")}))
    slmtune.train(tiny_config(run={"output": str(tmp_path / "c")}, train={"seed": 8}))
    la, lb, lc = (train_losses(tmp_path / x) for x in "abc")
    assert la == lb
    assert la != lc
    assert a.valid_loss == b.valid_loss


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(tiny_config, tmp_path):
    full = tiny_config(run={"output": str(tmp_path / "full")}, train={"save_every": 5, "save_total_limit": 10})
    slmtune.train(full)
    # a second run that "died" after step 5: keep only its first checkpoint
    cut = tiny_config(run={"output": str(tmp_path / "cut")}, train={"save_every": 5, "save_total_limit": 10})
    slmtune.train(cut)
    cut_dir = tmp_path / "cut"
    for step, path in list_checkpoints(cut_dir):
        if step > 5:
            shutil.rmtree(path)
    shutil.rmtree(cut_dir / "adapter")
    resumed = slmtune.train(cut, resume=True)
    assert resumed.status == "succeeded" and resumed.global_step == 24
    a, b = train_losses(tmp_path / "full"), train_losses(cut_dir)
    assert sorted(b) == list(range(1, 25))  # metrics.csv holds one history, not two
    for step in range(6, 25):
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
    resumed_msgs = [e for e in read_events(cut_dir / "events.jsonl") if e.message.startswith("Resuming")]
    assert [e.message for e in resumed_msgs] == ["Resuming from checkpoints/step-5 (step 5)"]


def test_rotation_keeps_the_newest_checkpoints(tiny_config, tmp_path):
    slmtune.train(tiny_config(train={"save_every": 5, "save_total_limit": 2}))
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [20, 24]


def test_existing_run_dir_is_not_overwritten_without_resume(tiny_config, tmp_path):
    slmtune.train(tiny_config(train={"max_steps": 2}))
    with pytest.raises(RunDirError, match="--resume"):
        slmtune.train(tiny_config(train={"max_steps": 2}))
    slmtune.train(tiny_config(train={"max_steps": 2}, run={"overwrite": True}))


def test_bad_data_fails_before_training_naming_every_line(tiny_config, tiny_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(tiny_data["train"].read_text() + '{"messages": []}\nnot json\n')
    with pytest.raises(DataError) as e:
        slmtune.train(tiny_config(data={"train": str(bad)}))
    lines = sorted(p.line for p in e.value.problems)
    assert lines == [33, 34]
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the error is in the run's event log too
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert any(ev.level == "error" and "bad.jsonl:34" in ev.message for ev in events)


@pytest.mark.parametrize("model,method", [("tiny-phi3", "lora"), ("tiny-llama", "dora"), ("tiny-phi3", "full")])
def test_methods_and_architectures_train_and_reload(tiny_config, tmp_path, model, method):
    cfg = tiny_config(model={"name": model}, method={"name": method})
    if method == "full":
        cfg["method"] = {"name": "full"}
    result = slmtune.train(cfg)
    losses = train_losses(tmp_path / "run")
    assert losses[24] < losses[1]
    artifact = tmp_path / "run" / ("model" if method == "full" else "adapter")
    assert result.artifact == str(artifact)
    m = slmtune.load(tmp_path / "run")
    before = slmtune.evaluate(model, tiny_config()["data"]["validation"])
    after = slmtune.evaluate(m, tiny_config()["data"]["validation"])
    assert after["loss"] == pytest.approx(result.valid_loss, rel=1e-4)
    assert after["loss"] < before["loss"]


def test_bf16_base_weights_train_to_about_the_same_loss_as_fp32(tiny_config, tmp_path):
    a = slmtune.train(tiny_config(run={"output": str(tmp_path / "fp32")}))
    b = slmtune.train(tiny_config(run={"output": str(tmp_path / "bf16")}, model={"precision": "bf16"}))
    assert b.valid_loss == pytest.approx(a.valid_loss, rel=0.03)
    cfg = json.loads(json.dumps(slmtune.load_config(tmp_path / "bf16" / "config.yaml").model_dump()))
    assert cfg["model"]["precision"] == "bf16"


def test_validation_split_holds_out_part_of_train(tiny_config, tmp_path):
    r = slmtune.train(tiny_config(data={"validation": None, "validation_split": 0.25}, train={"max_steps": 3}))
    started = [e for e in read_events(tmp_path / "run" / "events.jsonl") if "train_examples" in e.data][0]
    assert (started.data["train_examples"], started.data["validation_examples"]) == (24, 8)
    assert r.valid_loss is not None


def test_bf16_mixed_and_gradient_checkpointing_train_the_same_model(tiny_config, tmp_path):
    ref = slmtune.train(tiny_config(run={"output": str(tmp_path / "ref")}))
    ckpt = slmtune.train(tiny_config(run={"output": str(tmp_path / "gc")}, train={"gradient_checkpointing": True}))
    assert train_losses(tmp_path / "gc") == pytest.approx(train_losses(tmp_path / "ref"), abs=1e-4)
    mixed = slmtune.train(tiny_config(run={"output": str(tmp_path / "mixed")}, model={"precision": "bf16-mixed"}))
    assert mixed.valid_loss == pytest.approx(ref.valid_loss, rel=0.03)
    assert ckpt.valid_loss == pytest.approx(ref.valid_loss, abs=1e-4)


def test_export_merge_cli(tiny_config, tmp_path):
    from tests.helpers import run_cli

    slmtune.train(tiny_config(train={"max_steps": 3}))
    r = run_cli("export", "merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "merged" / "model.safetensors").exists()
    slmtune.train(tiny_config(method={"name": "prompt_tuning", "num_virtual_tokens": 4}, train={"max_steps": 2},
                              run={"output": str(tmp_path / "pt")}) | {"method": {"name": "prompt_tuning"}})
    r = run_cli("export", "merge", str(tmp_path / "pt"), "--out", str(tmp_path / "m2"))
    assert r.returncode == 1 and "cannot be merged: it adds virtual tokens" in r.stderr


def test_fused_loss_trains_the_same_model(tiny_config, tmp_path):
    a = slmtune.train(tiny_config(run={"output": str(tmp_path / "a")}, train={"fused_loss": False}))
    b = slmtune.train(tiny_config(run={"output": str(tmp_path / "b")}, train={"fused_loss": True}))
    assert train_losses(tmp_path / "b") == pytest.approx(train_losses(tmp_path / "a"), abs=1e-4)
    assert b.valid_loss == pytest.approx(a.valid_loss, abs=1e-4)


def test_packed_training_reaches_the_same_loss(tiny_config, tmp_path):
    a = slmtune.train(tiny_config(run={"output": str(tmp_path / "a")}))
    b = slmtune.train(tiny_config(run={"output": str(tmp_path / "b")}, data={"packing": True}))
    # same examples per step; the loss is normalised over the same tokens, so curves agree closely
    assert train_losses(tmp_path / "b") == pytest.approx(train_losses(tmp_path / "a"), rel=1e-3, abs=1e-3)
    assert b.valid_loss == pytest.approx(a.valid_loss, rel=1e-3)


def test_bf16_path_with_adapter_autocast_trains_like_fp32(tiny_config, tmp_path):
    """bf16 base + bf16 adapter compute (fp32 adapter weights/optimizer) follows the fp32 run within tolerance."""
    ref = slmtune.train(tiny_config(run={"output": str(tmp_path / "fp32")}))
    fast = slmtune.train(tiny_config(model={"precision": "bf16"}, run={"output": str(tmp_path / "bf16")}))
    slow = slmtune.train(tiny_config(model={"precision": "bf16", "adapter_autocast": False},
                                     run={"output": str(tmp_path / "bf16-fp32-adapters")}))
    a, b, c = (train_losses(tmp_path / n) for n in ("fp32", "bf16", "bf16-fp32-adapters"))
    assert max(abs(a[s] - b[s]) / a[s] for s in a) < 0.05
    assert max(abs(c[s] - b[s]) / c[s] for s in c) < 0.05
    assert fast.valid_loss == pytest.approx(ref.valid_loss, rel=0.05)
    assert slow.valid_loss == pytest.approx(ref.valid_loss, rel=0.05)
    # the saved adapter keeps fp32 weights either way
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
