"""200 concurrent API clients for 10 s while a job trains: not one error (latencies go to docs/benchmarks.md from
`benchmarks/service_load.py`, the same code; they are printed here, never asserted)."""

from __future__ import annotations

from benchmarks.service_load import measure

CLIENTS, SECONDS = 200, 10  # every operation runs dozens of times in 10 s; longer proves nothing more


def test_200_clients_for_10_s_while_a_job_trains_get_no_error(backend):
    res, info = measure(backend, CLIENTS, SECONDS)
    print(f"\n{backend}: {res.requests} requests, {len(res.errors)} errors, {info}")
    for op, n, p50, p99 in res.rows():
        print(f"  {op:18} {n:6} p50 {p50:7.0f} ms  p99 {p99:7.0f} ms")
    assert res.errors == [], res.errors[:5]
    assert len(res.latencies) == 7 and all(len(v) >= 5 for v in res.latencies.values())  # every operation ran
    assert info["job_status"] == "running" and info["steps_during_load"] > 0  # training went on meanwhile
