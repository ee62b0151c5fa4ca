"""`slmtune export gguf`: a tuned tiny Llama as one GGUF file with an Ollama Modelfile, read back by transformers'
GGUF reader with the same tokenizer and (f16) the same greedy tokens as PyTorch."""

from __future__ import annotations

import json
import shutil

import gguf
import pytest

import slmtune
from slmtune.export.gguf import export_gguf
from slmtune.export.onnx import ExportError
from slmtune.models.registry import resolve
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("gguf") / "run"
    slmtune.train({"model": {"name": "tiny-llama", "precision": "fp32"}, "data": {"train": str(tiny_data["train"])},
                   "method": {"name": "lora", "r": 8},
                   "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 5e-2},
                   "run": {"output": str(out)}})
    return out


def test_f16_export_reads_back_identical_and_has_a_modelfile(tuned, tmp_path):
    rep = export_gguf(tuned, tmp_path / "out" / "tuned.gguf", type="f16")
    assert rep["tokenizer_identical"] is True
    # the tiny tokenizer is byte-level BPE with GPT-2's rule: named so, and llama.cpp's rules give its ids
    assert rep["pre_tokenizer"] == "gpt-2" and rep["llama_cpp_tokens_identical"] is True, rep
    assert gguf.GGUFReader(rep["file"]).fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert rep["token_agreement"] == 1.0 and rep["max_abs_logit_diff_f16"] < 1e-4, rep
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tuned.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "<|im_start|>{{ .Role }}" in modelfile
    # the tiny template adds no system prompt and the model sets no sampling defaults: the Modelfile adds neither
    assert "SYSTEM" not in modelfile and "temperature" not in modelfile
    # tools in the fallback's form (data.tools), so Ollama's tools= asks for calls the way training taught
    assert "{{- if .Tools }}" in modelfile and "<tool_call>" in modelfile and "{{ json $t }}" in modelfile
    # the tuned weights are in it, not the base's: it answers differently from the base's own export
    base = export_gguf("tiny-llama", tmp_path / "base" / "base.gguf", type="f16")
    assert (tmp_path / "out" / "tuned.gguf").read_bytes() != (tmp_path / "base" / "base.gguf").read_bytes()
    assert base["token_agreement"] == 1.0


def test_q8_0_is_smaller_and_reports_its_agreement_through_the_cli(tuned, tmp_path):
    f16 = export_gguf(tuned, tmp_path / "a" / "m.gguf", type="f16", check=False)
    r = run_cli("export", "gguf", str(tuned), "--out", str(tmp_path / "b" / "m.gguf"), "--type", "q8_0")
    assert r.returncode == 0, r.stderr
    assert "GGUF (q8_0) written to" in r.stdout and "tokenizer identical" in r.stdout
    assert "pre-tokenizer 'gpt-2': llama.cpp tokenizes 14 check texts as the model does" in r.stdout
    assert (tmp_path / "b" / "m.gguf").stat().st_size < f16["bytes"]


def test_other_architectures_and_types_are_refused_clearly(tmp_path):
    r = run_cli("export", "gguf", "tiny-phi3", "--out", str(tmp_path / "p.gguf"))
    assert r.returncode == 1 and "supports Llama-architecture models" in r.stderr and "'phi3'" in r.stderr
    r = run_cli("export", "gguf", "tiny-llama", "--out", str(tmp_path / "p.gguf"), "--type", "q4_k")
    assert r.returncode == 1 and "--type q4_k: choose one of f16, q8_0" in r.stderr


def test_a_tokenizer_llama_cpp_cannot_reproduce_is_refused_unless_named(tmp_path):
    """A tokenizer whose words are cut on whitespace alone: no llama.cpp pre-tokenizer does that, so the export
    refuses rather than write a file llama.cpp would tokenize differently; named explicitly, it is written and the
    difference reported."""
    model = tmp_path / "model"
    shutil.copytree(resolve("tiny-llama"), model)
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                      "use_regex": False}]}
    (model / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match=r"no llama.cpp pre-tokenizer reproduces this tokenizer .*--pre-tokenizer"):
        export_gguf(model, tmp_path / "a" / "m.gguf", check=False)
    assert not (tmp_path / "a" / "m.gguf").exists()
    rep = export_gguf(model, tmp_path / "b" / "m.gguf", check=False, pre_tokenizer="gpt-2")
    assert rep["llama_cpp_tokens_identical"] is False and "transformers [" in rep["llama_cpp_mismatches"][0]
    rep = export_gguf(model, tmp_path / "c" / "m.gguf", check=False, pre_tokenizer="falcon")  # rules not known here
    assert rep["llama_cpp_tokens_identical"] is None
    assert gguf.GGUFReader(rep["file"]).fields["tokenizer.ggml.pre"].contents() == "falcon"
