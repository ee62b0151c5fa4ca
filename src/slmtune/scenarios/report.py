"""``slmtune report RUN``: report.md with PNG plots (loss curves, metric before/after, confusion matrix)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from slmtune.scenarios.catalog import get
from slmtune.scenarios.evaluate import OUTPUTS_FILE
from slmtune.scenarios.pipeline import read_scores, scored_dir

PLOTS = "plots"


def _loss_curves(run_dir: Path) -> tuple[list, list, list, list]:
    steps, losses, vsteps, vlosses = [], [], [], []
    f = run_dir / "metrics.csv"
    if f.exists():
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("train_loss"):
                    steps.append(int(row["step"]))
                    losses.append(float(row["train_loss"]))
                if row.get("valid_loss"):
                    vsteps.append(int(row["step"]))
                    vlosses.append(float(row["valid_loss"]))
    return steps, losses, vsteps, vlosses


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.md and RUN/plots/*.png from what the run directory holds; returns the report path."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.csv").exists() and not (run_dir / "scenario").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no metrics.csv, no scenario/ results)")
    info = json.loads((run_dir / "scenario.json").read_text()) if (run_dir / "scenario.json").exists() else None
    scores = read_scores(run_dir)
    plots = run_dir / PLOTS
    plots.mkdir(exist_ok=True)
    lines = _summary(run_dir, info) + _loss_section(run_dir, plots)
    if scores and info:
        sc = get(info["name"])
        lines += _metrics_section(sc, scores, plots)
        if sc.name == "classification":
            lines += _confusion_section(scores, plots)
        lines += _outputs_section(run_dir, scores)
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported here: it is only needed when a report is written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def _summary(run_dir: Path, info: dict | None) -> list[str]:
    lines = [f"# Report: {run_dir.name}", ""]
    if info:
        sc = get(info["name"])
        lines += [f"Scenario **{sc.name}** ({sc.summary}); records {sc.record}; training file `{info['train']}`.", ""]
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
    if result:
        lines += [f"Training: {result.get('global_step')} steps, {result.get('train_runtime_s')} s, "
                  f"{result.get('tokens_per_second')} tokens/s, final train loss {_fmt(result.get('train_loss'))}, "
                  f"validation loss {_fmt(result.get('valid_loss'))}.", ""]
    return lines


def _loss_section(run_dir: Path, plots: Path) -> list[str]:
    steps, losses, vsteps, vlosses = _loss_curves(run_dir)
    if not steps:
        return []
    fig, ax = _pyplot().subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, label="train loss")
    if vsteps:
        ax.plot(vsteps, vlosses, "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, plots / "loss.png")
    return ["## Loss", "", f"![loss curves]({PLOTS}/loss.png)", ""]


def _metrics_section(sc, scores: dict, plots: Path) -> list[str]:
    """The scenario's metrics per model as a table, the headline verdict, and a bar chart."""
    names = [m for m in sc.metrics if any(isinstance(s.get(m), (int, float)) for s in scores.values())]
    lines = ["## Metrics on the held-out records", "", "| metric | " + " | ".join(scores) + " |",
             "|---|" + "---|" * len(scores)]
    for m in names:
        lines.append(f"| {m} | " + " | ".join(_fmt(scores[k].get(m, "")) for k in scores) + " |")
    if "base" in scores and "tuned" in scores:
        b, t = scores["base"].get(sc.headline), scores["tuned"].get(sc.headline)
        if isinstance(b, (int, float)) and isinstance(t, (int, float)):
            verdict = "better" if (t > b if sc.better == "higher" else t < b) else "not better"
            lines += ["", f"Headline: {sc.headline} {_fmt(b)} → {_fmt(t)} (tuned is {verdict}; "
                      f"{sc.better} is better)."]
    lines.append("")
    fig, axes = _pyplot().subplots(1, len(names), figsize=(2.4 * max(1, len(names)), 3), squeeze=False)
    for ax, m in zip(axes[0], names):
        vals = [float(scores[k].get(m, 0) or 0) for k in scores]
        ax.bar(list(scores), vals, color=["#999999", "#2a7ab9"][: len(vals)])
        ax.set_title(m, fontsize=9)
    _save(fig, plots / "metrics.png")
    return lines + [f"![metrics before/after]({PLOTS}/metrics.png)", ""]


def _confusion_section(scores: dict, plots: Path) -> list[str]:
    """One confusion matrix per model (classification), with an '(unparseable)' column for answers of no label."""
    lines = []
    for kind, s in scores.items():
        labels = s["labels"]
        cols = [*labels, "(unparseable)"]
        mat = [[s["confusion"][g][c] for c in cols] for g in labels]
        fig, ax = _pyplot().subplots(figsize=(1 + 0.8 * len(cols), 1 + 0.6 * len(labels)))
        ax.imshow(mat, cmap="Blues")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i, row in enumerate(mat):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(f"{kind} model")
        _save(fig, plots / f"confusion_{kind}.png")
        lines += [f"![confusion matrix, {kind}]({PLOTS}/confusion_{kind}.png)", ""]
    return lines


def _outputs_section(run_dir: Path, scores: dict) -> list[str]:
    """Where every output is, with the first three per model quoted."""
    lines = ["## Outputs", ""]
    for kind in scores:
        f = scored_dir(run_dir, kind) / OUTPUTS_FILE
        if f.exists():
            lines.append(f"- {kind}: `scenario/{kind}/{OUTPUTS_FILE}` (every prompt, reference and output)")
            for row in [json.loads(x) for x in f.read_text().splitlines()[:3]]:
                lines.append(f"  - line {row['line']}: expected {json.dumps(row['reference'][:120])}, got "
                             f"{json.dumps(row.get('output', '')[:120])}")
    return lines + [""]
