"""ONNX export: tiny Llama and Phi-3 with a LoRA adapter pass the parity gate and chat through ONNX Runtime; broken
or unsupported models fail clearly."""

import json

import pytest

import slmtune
from slmtune.export.onnx import ExportError, export_onnx
from tests.helpers import FACTS, chat_record, run_cli, write_jsonl


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-phi3"])
def tuned(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    train = write_jsonl(d / "train.jsonl", [chat_record(*FACTS[i % 4]) for i in range(16)])
    slmtune.train({"model": {"name": request.param, "precision": "fp32"}, "data": {"train": str(train)},
                   "method": {"name": "lora", "r": 8, "alpha": 16},
                   "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 2e-2},
                   "run": {"output": str(d / "run")}})
    return d


def test_fp32_export_passes_the_parity_gate_and_chats(tuned):
    rep = export_onnx(tuned / "run", tuned / "onnx", precision="fp32", validation=str(tuned / "train.jsonl"),
                      log=lambda s: None)
    assert rep["ok"] and rep["token_agreement"] == 1.0 and rep["max_abs_logit_diff"] < 1e-3
    assert abs(rep["eval_loss_change"]) < 1e-4
    assert json.loads((tuned / "onnx" / "parity.json").read_text())["ok"]
    assert (tuned / "onnx" / "tokenizer_config.json").exists() and (tuned / "onnx" / "model.onnx").exists()
    onnx_model = slmtune.load(tuned / "onnx")
    torch_model = slmtune.load(tuned / "run")
    msgs = [{"role": "user", "content": "What is your favorite fruit?"}]
    assert onnx_model.runtime == "onnx"
    # the exported model says what the PyTorch model says (greedy, same template)
    assert onnx_model.chat(msgs, max_new_tokens=12) == torch_model.chat(msgs, max_new_tokens=12)
    assert "".join(onnx_model.chat_stream(msgs, max_new_tokens=12)).strip() == onnx_model.chat(msgs, max_new_tokens=12)


def test_quantized_export_reports_agreement(tuned):
    rep = export_onnx(tuned / "run", tuned / "onnx-int8", precision="int8", log=lambda s: None)
    assert rep["ok"] and 0.0 <= rep["token_agreement"] <= 1.0 and rep["min_cosine"] > 0.9


def test_cli_export_chat_and_errors(tuned, tmp_path):
    r = run_cli("export", "onnx", str(tuned / "run"), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "greedy token agreement 100%" in r.stdout
    r = run_cli("chat", str(tmp_path / "o"), "--runtime", "onnx", "--prompt", "Hi", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    r = run_cli("chat", str(tuned / "run"), "--runtime", "onnx", "--prompt", "Hi")
    assert r.returncode == 2 and "not an exported ONNX model" in r.stderr
    r = run_cli("export", "onnx", str(tuned / "run"), "--out", str(tmp_path / "p"), "--precision", "int3")
    assert r.returncode == 1 and "one of fp32, int8, int4" in r.stderr
    r = run_cli("export", "providers")
    assert r.returncode == 0 and "CPUExecutionProvider" in r.stdout


def test_a_corrupted_export_is_a_clear_error(tuned, tmp_path):
    import shutil

    shutil.copytree(tuned / "onnx", tmp_path / "broken") if (tuned / "onnx").exists() else \
        export_onnx(tuned / "run", tmp_path / "broken", log=lambda s: None)
    (tmp_path / "broken" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="ONNX Runtime could not load the model"):
        slmtune.load(tmp_path / "broken")


def test_an_unsupported_architecture_is_a_clear_error(tmp_path):
    from slmtune.models.registry import resolve

    src = resolve("tiny-llama")
    import shutil

    shutil.copytree(src, tmp_path / "odd")
    cfg = json.loads((tmp_path / "odd" / "config.json").read_text())
    cfg["architectures"] = ["MadeUpForCausalLM"]
    (tmp_path / "odd" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="builder could not export"):
        export_onnx(tmp_path / "odd", tmp_path / "out", log=lambda s: None)


def test_the_service_serves_an_exported_model(tuned, tmp_path):
    """`slmtune serve --onnx NAME=DIR`: the exported model answers /v1/chat/completions through the openai SDK,
    streaming and not, with the same greedy text the ONNX model gives directly."""
    from tests.service.conftest import start_server

    if not (tuned / "onnx").exists():
        export_onnx(tuned / "run", tuned / "onnx", log=lambda s: None)
    srv = start_server("sqlite", tmp_path, workers=0, auth=False, onnx_models={"support-onnx": str(tuned / "onnx")})
    try:
        client = srv.client()
        assert "support-onnx" in [m.id for m in client.models.list().data]
        msgs = [{"role": "user", "content": "What is your favorite city?"}]
        reply = client.chat.completions.create(model="support-onnx", messages=msgs, max_tokens=10)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="support-onnx", messages=msgs, max_tokens=10, stream=True) if c.choices)
        direct = slmtune.load(tuned / "onnx").chat(msgs, max_new_tokens=10)
        assert reply.choices[0].message.content == direct == streamed.strip()
        assert reply.usage.completion_tokens > 0
        # several at once share onnxruntime-genai's batch and still give each its own answer
        from concurrent.futures import ThreadPoolExecutor

        questions = [[{"role": "user", "content": f"What is your favorite {k}?"}] for k in ("city", "color", "fruit")]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda m: client.chat.completions.create(
                model="support-onnx", messages=m, max_tokens=10).choices[0].message.content, questions * 2))
        alone = [slmtune.load(tuned / "onnx").chat(m, max_new_tokens=10) for m in questions]
        assert together == alone * 2
    finally:
        srv.stop()
