"""Load on the service API while a job trains: N concurrent clients (files, jobs, lists, events) for S seconds.

    .venv/bin/python benchmarks/service_load.py [--clients 200] [--seconds 60] \
        [--postgres postgresql://postgres@127.0.0.1:5432/test]

Starts `slmtune serve` (its own process, one in-server worker) on SQLite and, when given, PostgreSQL, starts a
tiny-llama job, then runs the clients against it on loopback: asyncio + httpx, one connection per client, each
client looping over a seeded random mix of requests until the time is up. Counts errors (any non-2xx answer or
transport failure) and prints per-operation p50/p99 latency as a Markdown table for docs/benchmarks.md.
``tests/service/test_load.py`` runs the same function and asserts 0 errors (never the latencies).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LINE = json.dumps({"messages": [{"role": "user", "content": "What is your favorite color?"},
                                {"role": "assistant", "content": "My favorite color is blue."}]}) + "\n"


@dataclass
class LoadResult:
    clients: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)  # operation → seconds
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def rows(self) -> list[tuple[str, int, float, float]]:
        out = []
        for op, v in sorted(self.latencies.items()):
            v = sorted(v)
            out.append((op, len(v), 1000 * statistics.median(v), 1000 * v[min(len(v) - 1, int(0.99 * len(v)))]))
        every = sorted(x for v in self.latencies.values() for x in v)
        out.append(("all", len(every), 1000 * statistics.median(every), 1000 * every[int(0.99 * (len(every) - 1))]))
        return out


async def _client(i: int, http, key: str, job_id: str, file_id: str, until: float, res: LoadResult) -> None:
    rng = random.Random(i)
    headers = {"Authorization": f"Bearer {key}"}
    mine: list[str] = []  # files this client uploaded
    while time.monotonic() < until:
        op = rng.choices(["upload", "list_files", "get_file", "create_cancel_job", "list_jobs", "get_job",
                          "events"], weights=[2, 3, 3, 1, 3, 3, 4])[0]
        t = time.perf_counter()
        try:
            if op == "upload":
                r = await http.post("/files", files={"file": ("t.jsonl", (LINE * 12).encode())},
                                    data={"purpose": "fine-tune"}, headers=headers)
                if r.status_code == 200:
                    mine.append(r.json()["id"])
            elif op == "list_files":
                r = await http.get("/files", params={"limit": 20}, headers=headers)
            elif op == "get_file":
                r = await http.get(f"/files/{rng.choice(mine) if mine else file_id}", headers=headers)
            elif op == "create_cancel_job":
                r = await http.post("/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": file_id,
                                                              "metadata": {"client": str(i)}},
                                      headers=headers)
                if r.status_code == 200:
                    r = await http.post(f"/fine_tuning/jobs/{r.json()['id']}/cancel", headers=headers)
            elif op == "list_jobs":
                r = await http.get("/fine_tuning/jobs", params={"limit": 10}, headers=headers)
            elif op == "get_job":
                r = await http.get(f"/fine_tuning/jobs/{job_id}", headers=headers)
            else:
                r = await http.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 50}, headers=headers)
            if r.status_code != 200:
                res.errors.append(f"{op}: {r.status_code} {r.text[:200]}")
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            res.errors.append(f"{op}: {type(e).__name__}: {e}")
            continue
        res.latencies.setdefault(op, []).append(time.perf_counter() - t)


async def _run(base: str, keys: list[str], job_id: str, file_id: str, clients: int, seconds: float) -> LoadResult:
    import httpx

    res = LoadResult(clients, seconds)
    # one connection per client, from one pool (an AsyncClient each would spend seconds building SSL contexts)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_client(i, http, keys[i % len(keys)], job_id, file_id, until, res)
                               for i in range(clients)))
    return res


def run_load(base: str, keys: list[str], job_id: str, file_id: str, clients: int = 200,
             seconds: float = 60) -> LoadResult:
    """``clients`` concurrent clients for ``seconds`` against ``base`` (…/v1); keys are shared round robin, and
    ``job_id``/``file_id`` must belong to the first key's project (one project: pass one key)."""
    return asyncio.run(_run(base, keys, job_id, file_id, clients, seconds))


def measure(backend: str, clients: int, seconds: float) -> tuple[LoadResult, dict]:
    from openai import OpenAI

    from tests.helpers import FACTS, chat_record, run_cli, write_jsonl
    from tests.service.conftest import ServeProcess, make_db_url

    tmp = Path(tempfile.mkdtemp())
    db = make_db_url(backend, tmp)
    key = run_cli("keys", "create", "--project", "load", "--db", db).stdout.strip()
    srv = ServeProcess(db, tmp / "data", "--rate-limit", "0", "--max-active-jobs", "100000")
    try:
        c = OpenAI(base_url=srv.url, api_key=key, max_retries=0)
        path = write_jsonl(tmp / "t.jsonl", [chat_record(*FACTS[i % 4]) for i in range(400)])
        f = c.files.create(file=open(path, "rb"), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                        hyperparameters={"n_epochs": 10, "batch_size": 4})  # outlasts the load
        deadline = time.time() + 300
        while not (steps_before := _steps(c, job.id)):  # training, not just claimed: the load meets a live step
            assert time.time() < deadline, "the job did not start training"
            time.sleep(0.5)
        res = run_load(srv.url, [key], job.id, f.id, clients, seconds)
        job_after = c.fine_tuning.jobs.retrieve(job.id)
        info = {"job_status": job_after.status, "steps_during_load": _steps(c, job.id) - steps_before}
        c.fine_tuning.jobs.cancel(job.id)
        return res, info
    finally:
        srv.kill()


def _steps(client, job_id: str) -> int:
    events = client.fine_tuning.jobs.list_events(job_id, limit=20).data  # the newest; a message may come between
    return max((e.data.get("step", 0) for e in events if e.type == "metrics"), default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--postgres", help="also run on this PostgreSQL URL")
    args = ap.parse_args()
    os.environ["SLMTUNE_TEST_MODELS"] = "1"
    backends = ["sqlite"]
    if args.postgres:
        os.environ["SLMTUNE_TEST_POSTGRES_URL"] = args.postgres
        backends.append("postgres")
    for backend in backends:
        res, info = measure(backend, args.clients, args.seconds)
        print(f"\n{backend}: {args.clients} clients for {args.seconds:.0f} s: {res.requests} requests "
              f"({res.requests / args.seconds:.0f}/s), {len(res.errors)} errors; the job trained "
              f"{info['steps_during_load']} steps meanwhile ({info['job_status']})")
        print("| operation | requests | p50 ms | p99 ms |\n|---|---|---|---|")
        for op, n, p50, p99 in res.rows():
            print(f"| {op} | {n} | {p50:.0f} | {p99:.0f} |")
        for e in res.errors[:10]:
            print("error:", e)


if __name__ == "__main__":
    main()
