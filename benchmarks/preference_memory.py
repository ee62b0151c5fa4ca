"""Peak memory and time of the preference objectives on the same data, model and adapter: DPO (a reference pass with
the adapter off) against ORPO and SimPO (no reference at all) and KTO — each run in a fresh process, one after the
other, in one invocation.

    .venv/bin/python benchmarks/preference_memory.py [--model smollm2-135m-instruct] [--steps 8] [--batch 4]

Peak memory is the child's peak resident set (``wait4``'s ru_maxrss): weights, activations, optimizer state and
whatever the trainer holds. Data: examples/recipes/preferences.jsonl, 512-token limit. Prints Markdown."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, time
import slmtune
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
r = slmtune.train(cfg)
print(json.dumps({"status": r.status, "steps": r.global_step, "train_s": r.train_runtime_s,
                  "wall_s": time.perf_counter() - t0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--objectives", default="dpo,orpo,simpo,kto")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.rollout import cpu

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="slmtune-bench-pref-"))
    for objective in a.objectives.split(","):
        cfg = {"model": {"name": a.model}, "data": {"train": str(ROOT / "examples/recipes/preferences.jsonl"),
                                                    "max_seq_length": 512},
               "method": {"name": "lora", "r": 16, "alpha": 32},
               "train": {"objective": objective, "max_steps": a.steps, "batch_size": a.batch, "seed": 1,
                         "learning_rate": 5e-5, "dpo_beta": 2.0 if objective == "simpo" else 0.1},
               "run": {"output": str(tmp / objective)}}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        res = json.loads(out.strip().splitlines()[-1])
        rows.append((objective, usage.ru_maxrss / 1024, res["train_s"] / max(res["steps"], 1), res["status"]))
    dpo = next((r[1] for r in rows if r[0] == "dpo"), None)
    print(f"Machine: {cpu()}; {a.model}, LoRA r16, batch {a.batch}, {a.steps} steps, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| objective | reference model | peak RSS (MB) | vs DPO | seconds / step |")
    print("|---|---|---|---|---|")
    for objective, mb, per_step, status in rows:
        ref = "none" if objective in ("orpo", "simpo") else "the base, adapter off"
        ratio = f"{mb / dpo:.2f}×" if dpo else "—"
        note = "" if status == "succeeded" else f" ({status})"
        print(f"| {objective} | {ref} | {mb:.0f} | {ratio} | {per_step:.2f}{note} |")


if __name__ == "__main__":
    main()
