"""The measured method table: every method on the default model, same data, same token budget.

    .venv/bin/python benchmarks/methods.py [--steps 12] [--methods lora,dora,...] [--write]

Prints this run's table (Markdown). ``--write`` regenerates docs/methods.md from the saved rows of every setting
(the calibration table and the held-out ones): only after a run of every method on the machine the planner is
calibrated on, since it replaces the page, sections written by hand included.

Each method runs in its own process (so peak RSS is that run's alone) on the demo data (examples/demo/), batch 8,
``--steps`` optimizer steps, and is evaluated on the held-out split. For every row the planner's prediction
(``slmtune.plan``) is printed beside the measurement with the relative error, twice: the probe's estimate (the
class factors this table calibrates: ``calibrated=False``), and, made before the run, the prediction from the
earlier runs of this benchmark on this machine (their speeds are kept in WORK/speeds.jsonl; '-' for the first).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from child import emit, last_error
from child import run as run_child

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
LR = {"ia3": 1e-2, "prompt_tuning": 3e-2, "prefix_tuning": 1e-2, "p_tuning": 1e-2, "vera": 1e-2, "full": 5e-5,
      "adalora": 2e-3}
ORDER = ["lora", "dora", "qlora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning", "adalora", "loha", "lokr",
         "vera", "full"]


SETTINGS = {  # the calibration setting, and a held-out one that checks the planner elsewhere
    "calibrate": {"batch_size": 8, "max_seq_length": 256, "gradient_checkpointing": False},
    "check": {"batch_size": 4, "max_seq_length": 128, "gradient_checkpointing": False},
    "check-gc": {"batch_size": 16, "max_seq_length": 256, "gradient_checkpointing": True},
}


def config(method: str, steps: int, out: Path, setting: str = "calibrate") -> dict:
    st = SETTINGS[setting]
    return {
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"train": str(DEMO / "train.jsonl"), "validation": str(DEMO / "val.jsonl"),
                 "max_seq_length": st["max_seq_length"], "truncate": True},
        "method": {"name": method},
        "train": {"max_steps": steps, "batch_size": st["batch_size"], "learning_rate": LR.get(method, 1e-3),
                  "warmup_ratio": 0.1, "eval_every": 0, "save_total_limit": 1, "seed": 0,
                  "gradient_checkpointing": st["gradient_checkpointing"]},
        "run": {"output": str(out), "overwrite": True},
    }


def run_one(method: str, steps: int, out: Path, setting: str) -> dict:
    """In a child process: train, then report what was measured."""
    import slmtune
    from slmtune.events import read_events

    t0 = time.perf_counter()
    result = slmtune.train(config(method, steps, out, setting))
    wall = time.perf_counter() - t0
    started = [e for e in read_events(out / "events.jsonl") if "trainable_params" in e.data][0]
    metrics = [e.data for e in read_events(out / "events.jsonl") if e.type == "metrics" and "train_loss" in e.data]
    steady = [m["tokens_per_second"] for m in metrics[2:]] or [result.tokens_per_second]
    artifact = Path(result.artifact)
    size = sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file() and "tokenizer" not in f.name)
    return {
        "method": method, "trainable_params": started.data["trainable_params"],
        "total_params": started.data["total_params"], "peak_rss_mb": resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 1024, "tokens_per_second": sorted(steady)[len(steady) // 2],
        "train_runtime_s": result.train_runtime_s, "wall_s": wall, "valid_loss": result.valid_loss,
        "artifact_mb": size / 1e6, "precision": slmtune.load_config(out / "config.yaml").model.precision,
        "setting": setting,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--methods", default=",".join(ORDER))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--work", default="runs/bench-methods")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "methods.md"))
    ap.add_argument("--write", action="store_true", help="regenerate --doc from the saved rows (replaces the page)")
    ap.add_argument("--setting", default="calibrate", choices=list(SETTINGS))
    ap.add_argument("--replan", action="store_true",
                    help="re-predict from the measurements saved in WORK/rows.json and rewrite the doc (no training)")
    args = ap.parse_args()
    work = Path(args.work)
    if args.one:
        emit(run_one(args.one, args.steps, work / args.one, args.setting))
        return

    import slmtune

    # the children log their speeds here (inherited): the benchmark's runs calibrate its later rows, not the user's
    os.environ["SLMTUNE_SPEED_LOG"] = str((work / "speeds.jsonl").resolve())
    base_eval = None
    rows = []
    if args.replan:
        write_doc(Path(args.doc), work)
        return
    for method in args.methods.split(","):
        t = time.perf_counter()
        ahead = slmtune.plan(config(method, args.steps, work / method, args.setting))  # from the earlier runs
        row, proc = run_child([__file__, "--one", method, "--steps", str(args.steps), "--work", str(work),
                               "--setting", args.setting])
        if proc.returncode != 0 or row is None:
            print(f"{method}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            rows.append({"method": method, "error": last_error(proc)})
            continue
        plan = slmtune.plan(config(method, args.steps, work / method, args.setting), calibrated=False)
        row["pred_peak_rss_mb"] = plan.peak_memory_mb
        row["pred_tokens_per_second"] = plan.tokens_per_second
        row["cal_tokens_per_second"] = ahead.tokens_per_second if ahead.calibration_runs else None
        rows.append(row)
        cal = f", from runs {row['cal_tokens_per_second']:5.0f}" if ahead.calibration_runs else ""
        print(f"{method:14s} {row['tokens_per_second']:7.0f} tok/s (pred {plan.tokens_per_second:5.0f}{cal})  "
              f"RSS {row['peak_rss_mb']:6.0f} MB (pred {plan.peak_memory_mb:6.0f})  valid_loss {row['valid_loss']:.3f}"
              f"  [{time.perf_counter() - t:.0f}s]", flush=True)
    if base_eval is None:
        base_eval = slmtune.evaluate("smollm2-135m-instruct", DEMO / "val.jsonl")["loss"]
    work.mkdir(parents=True, exist_ok=True)
    (work / f"rows-{args.setting}.json").write_text(json.dumps({"steps": args.steps, "base_eval": base_eval,
                                                                "rows": rows}, indent=2))
    print("\n".join(_table(rows, base_eval)))
    if args.write:
        write_doc(Path(args.doc), work)


def _replan(work: Path, saved: dict, setting: str) -> None:
    import slmtune

    for row in saved["rows"]:
        if "error" not in row:
            p = slmtune.plan(config(row["method"], saved["steps"], work / row["method"], setting), calibrated=False)
            row["pred_peak_rss_mb"], row["pred_tokens_per_second"] = p.peak_memory_mb, p.tokens_per_second


def _table(rows: list[dict], base_eval: float | None) -> list[str]:
    lines = [
        "| method | precision | trainable params | % of model | peak RSS MB | tokens/s | eval loss | artifact MB | "
        "planner RSS MB (err) | planner tokens/s (err) | from earlier runs (err) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    errs_m, errs_t, errs_c = [], [], []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'][:80]} | | | | | | | | | |")
            continue
        em = (r["pred_peak_rss_mb"] - r["peak_rss_mb"]) / r["peak_rss_mb"]
        et = (r["pred_tokens_per_second"] - r["tokens_per_second"]) / r["tokens_per_second"]
        errs_m.append(abs(em))
        errs_t.append(abs(et))
        cal = r.get("cal_tokens_per_second")
        ec = None if cal is None else (cal - r["tokens_per_second"]) / r["tokens_per_second"]
        if ec is not None:
            errs_c.append(abs(ec))
        lines.append(
            f"| `{r['method']}` | {r['precision']} | {r['trainable_params']:,} | "
            f"{100 * r['trainable_params'] / r['total_params']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['tokens_per_second']:.0f} | {r['valid_loss']:.3f} | {r['artifact_mb']:.1f} | "
            f"{r['pred_peak_rss_mb']:.0f} ({100 * em:+.0f}%) | {r['pred_tokens_per_second']:.0f} ({100 * et:+.0f}%) | "
            + ("- |" if ec is None else f"{cal:.0f} ({100 * ec:+.0f}%) |")
        )
    if errs_m:
        lines += ["", f"Planner error over these rows: peak memory mean {100 * sum(errs_m) / len(errs_m):.0f}% "
                  f"(max {100 * max(errs_m):.0f}%), tokens/s mean {100 * sum(errs_t) / len(errs_t):.0f}% "
                  f"(max {100 * max(errs_t):.0f}%)"
                  + (f"; from earlier runs on this machine: tokens/s mean {100 * sum(errs_c) / len(errs_c):.0f}% "
                     f"(max {100 * max(errs_c):.0f}%) over {len(errs_c)} rows." if errs_c else ".")]
    return lines


def write_doc(path: Path, work: Path) -> None:
    import platform

    cal = json.loads((work / "rows-calibrate.json").read_text())
    _replan(work, cal, "calibrate")
    steps = cal["steps"]
    lines = [
        "# Methods, measured",
        "",
        "Every method of `slmtune.methods` on the default model (smollm2-135m-instruct, 135M parameters) on this "
        "project's machine (2 cores, Xeon with AMX-BF16, no GPU): the demo data (examples/demo/), batch 8, "
        f"{steps} optimizer steps (~{steps * 8 * 81 // 1000}k tokens), seed 0; eval loss on the held-out split "
        f"(base model before training: {cal['base_eval']:.3f}). Precision is `auto` (bf16 base weights where the "
        "method allows it). Each run is its own process, so peak RSS is that run's. Learning rates are one per "
        f"method family, not tuned per method: {json.dumps(LR)}, 1e-3 otherwise; at these settings prefix tuning "
        "and AdaLoRA diverged (eval loss above the base model's) and LoHa barely moved in 12 steps.",
        "",
        f"    .venv/bin/python benchmarks/methods.py --steps {steps}",
        "",
        *_table(cal["rows"], cal["base_eval"]),
        "",
        "The planner's constants (runtime overhead, activation factor, per-method memory temporaries and speed "
        "factors, efficiency per precision; `src/slmtune/planner.py`) were fit on the table above, so its errors "
        "there are small by construction (refit 2026-11-30 after the fused head loss and the bf16 adapter compute "
        "changed every method's memory and speed). Held-out checks on other settings — `--setting check` (smaller "
        "batch, shorter sequences) and `--setting check-gc` (larger batch, gradient checkpointing) — print their "
        "tables below when they have been run; they have not been re-run since that refit.",
    ]
    for setting in ("check", "check-gc"):
        f = work / f"rows-{setting}.json"
        if f.exists():
            saved = json.loads(f.read_text())
            _replan(work, saved, setting)
            st = SETTINGS[setting]
            lines += ["", f"### Held-out setting `{setting}`: batch {st['batch_size']}, max_seq_length "
                      f"{st['max_seq_length']}, gradient checkpointing "
                      f"{'on' if st['gradient_checkpointing'] else 'off'}"
                      f", {saved['steps']} steps", "",
                      f"    .venv/bin/python benchmarks/methods.py --setting {setting} --steps {saved['steps']} "
                      f"--methods {','.join(r['method'] for r in saved['rows'])}", "", *_table(saved["rows"], None)]
    lines += ["", "Targets for the planner: peak memory within 15%, time within 30%.", "",
              f"Python {platform.python_version()}, {platform.machine()}.", ""]
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
