"""`model.precision: auto` on the CPU this runs on: bf16 only where the CPU has bf16 matmul instructions."""

from pathlib import Path

import pytest
import torch

from slmtune.models.loading import cpu_bf16, resolve_precision


def _flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("no CPU flags in /proc/cpuinfo")


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto follows the GPU there")
def test_auto_is_bf16_exactly_where_the_cpu_has_amx_or_avx512_bf16():
    """oneDNN takes bf16 on any AVX512 CPU, emulating it where the instructions are missing (~5x slower than fp32
    there): `auto` must look at the instructions, not at oneDNN's answer."""
    hardware = bool({"avx512_bf16", "amx_bf16"} & _flags())
    assert cpu_bf16() is hardware
    assert resolve_precision("auto") == ("bf16" if hardware else "fp32")
    assert resolve_precision("auto", supported=("fp32",)) == "fp32"
    assert resolve_precision("bf16") == "bf16"  # an explicit choice is kept, fast or not


@pytest.mark.skipif(torch.cuda.is_available(), reason="the memory rule is the CPU's")
def test_auto_keeps_fp32_only_while_its_weights_fit_and_says_so_when_it_falls_back(tiny_config, tmp_path,
                                                                                  monkeypatch):
    """Where bf16 is not fast, `auto` is fp32 while the fp32 weights take at most half the memory available; past
    that the server loads the model in bf16 and a training run gets bf16 (what fits) with a message saying why and
    how to insist on fp32."""
    import json

    import slmtune
    from slmtune.models import loading
    from slmtune.models.registry import resolve
    from slmtune.training import run

    folder = resolve("tiny-llama")
    fp32 = loading.weights_mb(folder)
    params = sum(p.numel() for p in loading.load_base_model(folder, "fp32").parameters())
    assert fp32 == pytest.approx(params * 4 / 2**20)
    for module in (loading, run):  # this machine's facts, as a CPU without bf16 instructions and little memory
        monkeypatch.setattr(module, "fast_bf16", lambda: False)
    monkeypatch.setattr(loading, "available_memory_mb", lambda: 3 * fp32)
    assert loading.resolve_precision("auto", model_dir=folder) == "fp32"
    monkeypatch.setattr(loading, "available_memory_mb", lambda: 1.5 * fp32)
    monkeypatch.setattr(run, "available_memory_mb", lambda: 1.5 * fp32)
    assert loading.resolve_precision("auto", model_dir=folder) == "bf16"
    assert loading.resolve_precision("auto", supported=("fp32",), model_dir=folder) == "fp32"
    assert loading.resolve_precision("fp32", model_dir=folder) == "fp32"
    from slmtune.inference.serving import ModelServer

    assert ModelServer().precision_for(folder) == "bf16"  # `slmtune serve` loads each model by the same rule
    assert ModelServer(precision="fp32").precision_for(folder) == "fp32"

    result = slmtune.train(tiny_config(model={"precision": "auto"}, train={"max_steps": 2}))
    assert result.status == "succeeded"
    out = tmp_path / "run"
    assert "precision: bf16" in (out / "config.yaml").read_text()
    said = [json.loads(line)["message"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert any("bf16 base weights, as fp32 ones" in m and "model.precision: fp32 to insist" in m for m in said), said
