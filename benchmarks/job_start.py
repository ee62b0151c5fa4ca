"""How long a small job takes from creation to success, children spawned (each imports torch, transformers and peft
itself: what slmtune did before) against children forked from the preloaded forkserver (what it does now).

    .venv/bin/python benchmarks/job_start.py [--jobs 5]

One in-process server with one worker on SQLite; the tiny test model, 16 examples, batch 4, one epoch (4 steps), so
the figure is almost all start-up. Jobs run one after another; the first forkserver job includes starting the
forkserver itself (its preload), so the median is reported beside each run's first job. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["SLMTUNE_TEST_MODELS"] = "1"


def measure(how: str, jobs: int) -> list[float]:
    from slmtune.service import runner
    from tests.helpers import FACTS, chat_record, write_jsonl
    from tests.service.conftest import start_server, wait_status

    runner._context = mp.get_context("spawn") if how == "spawn" else None  # None: the forkserver, started anew
    tmp = Path(tempfile.mkdtemp())
    srv = start_server("sqlite", tmp, workers=1, auth=False)
    try:
        c = srv.client()
        data = write_jsonl(tmp / "t.jsonl", [chat_record(*FACTS[i % 4]) for i in range(16)])
        f = c.files.create(file=open(data, "rb"), purpose="fine-tune")
        out = []
        for _ in range(jobs):
            t = time.perf_counter()
            job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                             hyperparameters={"n_epochs": 1, "batch_size": 4})
            done = wait_status(c, job.id, ("succeeded", "failed"), timeout=600)
            if done.status != "succeeded":
                raise SystemExit(f"{how}: job failed: {done.error}")
            out.append(time.perf_counter() - t)
        return out
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5)
    args = ap.parse_args()
    rows = {how: measure(how, args.jobs) for how in ("spawn", "forkserver")}
    base = statistics.median(rows["spawn"])
    print(f"| training children | first job s | median s (of {args.jobs}) | × spawn |\n|---|---|---|---|")
    for how, times in rows.items():
        med = statistics.median(times)
        print(f"| {how} | {times[0]:.1f} | {med:.1f} | {med / base:.2f} |")


if __name__ == "__main__":  # the training children import this module again (multiprocessing's main)
    main()
