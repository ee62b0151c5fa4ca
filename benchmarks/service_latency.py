"""Job-creation latency of the service through the openai SDK (p50/p99 over N creations).

    .venv/bin/python benchmarks/service_latency.py [--n 200] [--postgres postgresql://postgres@127.0.0.1:5432/test]

Runs a server with no worker (so creation is measured alone, as the SDK sees it: HTTP + validation of the body
+ one transaction), on SQLite and, when given, PostgreSQL. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["SLMTUNE_TEST_MODELS"] = "1"


def measure(backend: str, n: int) -> dict:
    from tests.service.conftest import start_server

    tmp = Path(tempfile.mkdtemp())
    srv = start_server(backend, tmp, workers=0, auth=True, max_active_jobs_per_project=n + 1)
    try:
        c = srv.client(srv.new_key("bench"))
        f = c.files.create(file=("t.jsonl", b'{"prompt": "a", "completion": "b"}\n' * 10), purpose="fine-tune")
        c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id)  # warm-up
        times = []
        for i in range(n):
            t = time.perf_counter()
            c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, metadata={"i": str(i)})
            times.append(1000 * (time.perf_counter() - t))
        times.sort()
        return {"backend": backend, "n": n, "p50": statistics.median(times), "p99": times[int(0.99 * (n - 1))],
                "max": times[-1]}
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--postgres", default=os.environ.get("SLMTUNE_TEST_POSTGRES_URL"))
    args = ap.parse_args()
    backends = ["sqlite"]
    if args.postgres:
        os.environ["SLMTUNE_TEST_POSTGRES_URL"] = args.postgres
        backends.append("postgres")
    print("| database | creations | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
    for b in backends:
        r = measure(b, args.n)
        print(f"| {r['backend']} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |")
    from tests.service import conftest

    if conftest._SCHEMAS:
        import psycopg

        with psycopg.connect(args.postgres, autocommit=True) as conn:
            for s in conftest._SCHEMAS:
                conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")


if __name__ == "__main__":
    main()
