"""Every scenario on real data: base vs tuned on the held-out split, with the issue's targets.

    .venv/bin/python benchmarks/scenarios.py [--steps 60] [--eval-records 100] [--only sentiment,de-en]
                                                  # fetches the data, trains, scores, writes docs/scenarios.md

Each source is fetched (`slmtune data fetch`), trained with LoRA on the default model (batch 8, ``--steps``
optimizer steps, learning rate 1e-3), and scored on its eval split (at most ``--eval-records`` records) for the base
and the tuned model, each scenario in its own process. Rows already measured are kept in
runs/bench-scenarios/rows.json, so the table can be built up over several invocations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from child import emit
from child import run as run_child

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench-scenarios"
ORDER = ["sentiment", "topics", "ner-synthetic", "de-en", "python-faq", "chitchat", "poems", "python-docs"]
# The targets: (metric, kind, amount): "+" points higher, "x" ratio at most.
TARGETS = {"classification": ("accuracy", "+", 0.15), "ner": ("f1", "+", 0.20), "translation": ("chrf", "+", 5.0),
           "qa": ("token_f1", "+", 0.10), "domain": ("perplexity", "x", 0.8), "chat": ("loss", "x", 0.85),
           "creative": ("perplexity", "x", 0.85)}


def run_one(name: str, steps: int, eval_records: int) -> dict:
    import slmtune
    from slmtune.scenarios.fetch import fetch

    meta = fetch(name)
    out = WORK / name
    cfg = {"model": {"name": "smollm2-135m-instruct"}, "scenario": {"name": meta["scenario"],
                                                                    "eval_max_records": eval_records},
           "data": {"train": meta["train_file"], "validation": meta["eval_file"], "max_seq_length": 512,
                    "truncate": True},
           "method": {"name": "lora", "r": 16, "alpha": 32},
           "train": {"max_steps": steps, "batch_size": 8, "learning_rate": 1e-3, "eval_every": 0,
                     "save_total_limit": 1},
           "run": {"output": str(out), "overwrite": True}}
    t = time.perf_counter()
    r = slmtune.train(cfg)
    total = time.perf_counter() - t
    scores = {k: json.loads((out / "scenario" / k / "scores.json").read_text()) for k in ("base", "tuned")}
    return {"name": name, "scenario": meta["scenario"], "train_records": meta["train"], "eval_records":
            min(meta["eval"], eval_records), "steps": r.global_step, "train_s": r.train_runtime_s, "total_s": total,
            "tokens_per_second": r.tokens_per_second, "base": scores["base"], "tuned": scores["tuned"],
            "package": meta["package"]}


def verdict(row: dict) -> tuple[str, str, bool]:
    metric, kind, amount = TARGETS[row["scenario"]]
    b, t = row["base"][metric], row["tuned"][metric]
    if kind == "+":
        scale = 100 if metric != "chrf" else 1
        return metric, f"{b * scale:.1f} → {t * scale:.1f} ({(t - b) * scale:+.1f}; target +{amount * scale:g})", \
            t - b >= amount
    return metric, f"{b:.3g} → {t:.3g} (×{t / b:.2f}; target ×{amount})", t / b <= amount


def write_doc(rows: dict) -> None:
    lines = ["## Measured", "",
             "Each scenario on real data fetched by `slmtune data fetch` (sources and licences: "
             "[datasets.md](datasets.md)): LoRA r 16 on smollm2-135m-instruct, batch 8, learning rate 1e-3, on this "
             "project's 2-core CPU machine; the base and the tuned model scored by the scenario's metric on the held-"
             "out split (greedy generation). Percent-like metrics are shown ×100.", "",
             "    .venv/bin/python benchmarks/scenarios.py --steps 60 --eval-records 100", "",
             "| source | scenario | train records / steps | training | headline metric: base → tuned | target met |"
             " other metrics (base → tuned) |", "|---|---|---|---|---|---|---|"]
    for name in ORDER:
        if name not in rows:
            continue
        r = rows[name]
        metric, text, ok = verdict(r)
        others = []
        for m, v in r["tuned"].items():
            if m in (metric, "records", "scenario", "labels", "confusion", "true_positives", "predicted", "gold") \
                    or not isinstance(v, (int, float)):
                continue
            others.append(f"{m} {r['base'][m]:.3g} → {v:.3g}")
        lines.append(f"| {name} | {r['scenario']} | {r['train_records']} / {r['steps']} | {r['train_s']:.0f} s "
                     f"({r['tokens_per_second']:.0f} tok/s) | {metric}: {text} | {'yes' if ok else '**no**'} | "
                     f"{'; '.join(others)} |")
    lines += ["", "Eval records per scenario: at most the `--eval-records` given (rows.json has the counts). "
              "Outputs of every model on every record: runs/bench-scenarios/NAME/scenario/{base,tuned}/outputs.jsonl; "
              "report with plots: runs/bench-scenarios/NAME/report.md.", ""]
    doc = ROOT / "docs" / "scenarios.md"
    text = doc.read_text()
    start, end = text.index("<!-- measured:start -->"), text.index("<!-- measured:end -->")
    doc.write_text(text[:start] + "<!-- measured:start -->\n" + "\n".join(lines) + "\n" + text[end:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-records", type=int, default=100)
    ap.add_argument("--only", help="comma-separated sources (default: all)")
    ap.add_argument("--doc-only", action="store_true", help="rewrite docs/scenarios.md from rows.json, no runs")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        emit(run_one(args.one, args.steps, args.eval_records))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    saved = WORK / "rows.json"
    rows = json.loads(saved.read_text()) if saved.exists() else {}
    for name in [] if args.doc_only else (args.only.split(",") if args.only else ORDER):
        t = time.perf_counter()
        row, proc = run_child([__file__, "--one", name, "--steps", str(args.steps),
                               "--eval-records", str(args.eval_records)])
        if row is None:
            print(f"{name}: FAILED\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        rows[name] = row
        saved.write_text(json.dumps(rows, indent=2))
        metric, text, ok = verdict(rows[name])
        print(f"{name:14s} {metric}: {text} {'OK' if ok else 'MISSED'} [{time.perf_counter() - t:.0f}s]", flush=True)
    write_doc(rows)


if __name__ == "__main__":
    main()
