"""The Ray executor against the local one on the same tiny job: dispatch latency and end-to-end overhead.

    .venv/bin/python benchmarks/ray_executor.py [--runs 3]      # prints Markdown for docs/benchmarks.md

A one-node Ray cluster is started on loopback (`ray start --head`, in a process group of its own, stopped at the
end). For each executor, the same job (tiny-llama, 32 examples, 2 epochs, batch 4: 16 steps) is created through
the `openai` SDK against a real server, `--runs` times, alternating executors. Measured per job from the creation
request: *dispatch* = until the engine's first event ("Data: …", the training process is up and reading its data),
*total* = until the job reads `succeeded`. Ratios are Ray / local within the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["SLMTUNE_TEST_MODELS"] = "1"

from slmtune.training.distributed import free_port  # noqa: E402
from tests.helpers import FACTS, chat_record, write_jsonl  # noqa: E402
from tests.service.conftest import start_server  # noqa: E402


def one_job(srv, data: Path) -> tuple[float, float]:
    c = srv.client()
    f = c.files.create(file=open(data, "rb"), purpose="fine-tune")
    t0 = time.perf_counter()
    job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, seed=7,
                                    hyperparameters={"n_epochs": 2, "batch_size": 4})
    dispatch = None
    while True:
        msgs = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data]
        if dispatch is None and any(m.startswith("Data: ") for m in msgs):
            dispatch = time.perf_counter() - t0
        status = c.fine_tuning.jobs.retrieve(job.id).status
        if status in ("succeeded", "failed", "cancelled"):
            assert status == "succeeded", c.fine_tuning.jobs.retrieve(job.id).error
            return dispatch, time.perf_counter() - t0
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="slmtune-ray-bench-"))
    data = write_jsonl(tmp / "train.jsonl", [chat_record(*FACTS[i % 4]) for i in range(32)])
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard=false",
                             "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True)
    assert proc.wait(120) == 0
    results: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
    try:
        servers = {"local": start_server("sqlite", tmp / "local", auth=False),
                   "ray": start_server("sqlite", tmp / "ray", auth=False, executor="ray",
                                       ray_address=f"127.0.0.1:{port}", ray_cpus=2)}
        try:
            one_job(servers["ray"], data)  # warm-up: the first Ray worker process of the cluster
            for _ in range(args.runs):
                for name, srv in servers.items():
                    results[name].append(one_job(srv, data))
        finally:
            for srv in servers.values():
                srv.stop()
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(2)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    med = {k: (statistics.median(d for d, _ in v), statistics.median(t for _, t in v)) for k, v in results.items()}
    print(json.dumps(results))
    print("| executor | dispatch (create → training process reads its data) | total (create → succeeded) |")
    print("|---|---|---|")
    for k in ("local", "ray"):
        print(f"| {k} | {med[k][0]:.2f} s | {med[k][1]:.2f} s |")
    print(f"| ray / local | {med['ray'][0] / med['local'][0]:.2f}× | {med['ray'][1] / med['local'][1]:.2f}× |")


if __name__ == "__main__":
    main()
