"""One process against two, for every strategy, at the same global batch: per-process peak memory, speed, losses.

    .venv/bin/python benchmarks/distributed.py [--steps 8] [--methods lora,full]   # prints Markdown for
                                                                                    # docs/distributed.md

Each run is `slmtune train` in its own process tree on the default model and the demo data: 1 process with batch
8, or 2 processes with batch 4 each. Peak RSS is each process's own high-water mark (VmHWM in /proc, read while it
runs); for 2 processes the table shows the larger of the two ranks. Everything in fp32 (ZeRO and FSDP shard one
dtype, so slmtune runs them in fp32), so the loss curves are comparable to the last digit.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from child import vm_hwm_mb

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
WORK = ROOT / "runs" / "bench-distributed"
STRATEGIES = ["ddp", "zero1", "zero2", "zero3", "fsdp"]


def run(method: str, strategy: str | None, steps: int) -> dict:
    import psutil

    out = WORK / f"{method}-{strategy or 'single'}"
    nproc = 2 if strategy else 1
    lr = "5e-5" if method == "full" else "1e-3"
    from slmtune.training.distributed import free_port

    cmd = [str(Path(sys.executable).parent / "slmtune"), "train", "--model", "smollm2-135m-instruct",
           "--data", str(DEMO / "train.jsonl"), "--method", method, "--output", str(out),
           "--set", f"train.max_steps={steps}", "--set", f"train.batch_size={8 // nproc}",
           "--set", f"train.learning_rate={lr}", "--set", "train.group_by_length=false",
           "--set", "run.overwrite=true", "--set", f"train.save_every={steps}", "--set", "model.precision=fp32"]
    if strategy:
        cmd += ["--nproc", "2", "--strategy", strategy, "--set", f"distributed.master_port={free_port()}"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, float] = {}
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                cmdline = " ".join(p.cmdline())
            except psutil.Error:
                continue
            is_rank = "slmtune.training.distributed" in cmdline and "torch.distributed.run" not in cmdline
            if (strategy and is_rank) or (not strategy and p.pid == proc.pid):
                hwm = vm_hwm_mb(p.pid)
                if hwm:
                    peaks[p.pid] = max(peaks.get(p.pid, 0.0), hwm)
        time.sleep(0.2)
    err = proc.stderr.read()
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not (out / "result.json").exists():
        return {"error": (err.strip().splitlines() or ["?"])[-1][:160]}
    result = json.loads((out / "result.json").read_text())
    with (out / "metrics.csv").open(newline="") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh) if r["train_loss"]]
    return {"tokens_per_second": result["tokens_per_second"], "peak_rss_mb": max(peaks.values()) if peaks else None,
            "ranks": len(peaks), "losses": losses, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = {}
    for method in args.methods.split(","):
        print(f"### {method}, {args.steps} steps, global batch 8\n")
        print("| processes × strategy | peak RSS per process MB | tokens/s | loss step 1 → last | max abs loss diff "
              "vs 1 process | wall s |\n|---|---|---|---|---|---|")
        ref = None
        for strategy in [None, *args.strategies.split(",")]:
            r = run(method, strategy, args.steps)
            rows[f"{method}-{strategy}"] = r
            label = f"2 × {strategy}" if strategy else "1 process"
            if "error" in r:
                print(f"| {label} | failed: {r['error']} | | | | |", flush=True)
                continue
            ref = ref or r
            diff = max(abs(a - b) for a, b in zip(r["losses"], ref["losses"]))
            print(f"| {label} | {r['peak_rss_mb']:.0f} | {r['tokens_per_second']:.0f} | {r['losses'][0]:.3f} → "
                  f"{r['losses'][-1]:.3f} | {diff:.4f} | {r['wall_s']:.0f} |", flush=True)
        print()
    (WORK / "rows.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
