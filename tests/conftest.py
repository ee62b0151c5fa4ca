"""Shared fixtures: small chat data sets and configs for the tiny seeded models.

Tiny models are built into the normal cache ($SLMTUNE_HOME, default ~/.slmtune) on first use, in ~1 s;
the real default model is fetched there once (tests marked real_model).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import FACTS, chat_record, write_jsonl

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# training runs log their speed for the planner (training/speed.py): not into the user's log from tests, and no
# plan in a test is calibrated by another test's run (a test that wants the log points this at its own file)
os.environ["SLMTUNE_SPEED_LOG"] = ""
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on a 2-core machine: one thread each (and for the processes they
    # start), not two threads each fighting for the same cores
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# --- how `make test` shares the tests between its two workers (pytest-xdist, --dist loadscope) ---------------------
# A unit of work is a module, or a module on one storage backend (its module-scoped servers are per backend), or, for
# the modules below, each test (they share nothing costly). Units go out longest first, so that the last ones to
# finish are short: seconds each took with two workers on the 2-core machine (Xeon, AVX512, 2026-12-07); the rest
# count as 0 (a test of a PER_TEST module as 20) and keep their order. A stale figure only makes the sharing less
# even.
PER_TEST = {"tests/integration/test_distributed.py"}
SECONDS = {
    "tests/service/test_ray.py": 149, "tests/e2e/test_real_model.py": 116, "tests/service/test_faults.py[sqlite]": 105,
    "tests/service/test_fuzz.py[postgres]": 77, "tests/integration/test_onnx.py": 76,
    "tests/service/test_fuzz.py[sqlite]": 70, "tests/service/test_jobs.py[sqlite]": 65,
    "tests/service/test_recovery.py[sqlite]": 64, "tests/service/test_console.py": 60,
    "tests/service/test_faults.py": 57, "tests/integration/test_sweeps.py": 54,
    "tests/service/test_recovery.py[postgres]": 50, "tests/service/test_jobs.py[postgres]": 35,
    "tests/service/test_load.py[sqlite]": 34, "tests/service/test_load.py[postgres]": 29,
    "tests/integration/test_distributed.py::test_resume_a_zero2_run_with_the_same_process_count": 56,
    "tests/integration/test_distributed.py::test_two_nodes_of_one_process_each_on_loopback": 32,
}


def work_unit(nodeid: str) -> str:
    module, _, test = nodeid.partition("::")
    if module in PER_TEST:
        return nodeid
    backend = test.partition("[")[2].split("-")[0].rstrip("]")
    return f"{module}[{backend}]" if backend in ("sqlite", "postgres") else module


def expected_seconds(unit: str) -> float:
    return SECONDS.get(unit, 20 if unit.partition("::")[0] in PER_TEST else 0)


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # the order is the one pytest_collection_modifyitems gives
    return Units(config, log)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a stable sort: each unit's tests keep their order
        items.sort(key=lambda item: -expected_seconds(work_unit(item.nodeid)))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    train = [chat_record(*FACTS[i % len(FACTS)]) for i in range(32)]
    val = [chat_record(k, v) for k, v in FACTS]
    return {"train": write_jsonl(d / "train.jsonl", train), "validation": write_jsonl(d / "val.jsonl", val)}


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    """A raw config dict: tiny-llama, LoRA, 24 steps, fp32 (exact comparisons need one precision)."""

    def make(**sections) -> dict:
        cfg = {
            "model": {"name": "tiny-llama", "precision": "fp32"},
            "data": {"train": str(tiny_data["train"]), "validation": str(tiny_data["validation"])},
            "method": {"name": "lora", "r": 8, "alpha": 16},
            "train": {"epochs": 3, "batch_size": 4, "learning_rate": 2e-2, "seed": 7},
            "run": {"output": str(tmp_path / "run")},
        }
        for key, val in sections.items():
            cfg.setdefault(key, {}).update(val)
        return cfg

    return make
