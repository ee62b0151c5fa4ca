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
