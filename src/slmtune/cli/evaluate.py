"""`slmtune eval` (loss/perplexity/token accuracy, or a scenario's metric) and `slmtune report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmtune.cli.common import err, fail, handle_errors, out


@handle_errors
def eval_(
    target: Annotated[str | None, typer.Argument(help="Run directory, adapter or checkpoint folder, model id or "
                                                 "folder.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Evaluate this model (registry id or folder) instead "
                                              "of a TARGET: model.name, as for train and plan.")] = None,
    data: Annotated[Path | None, typer.Option("--data", "--validation", help="Data to score (any format train "
                                              "reads); with --scenario, the scenario's records (default: the run's "
                                              "held-out records).")] = None,
    compare_base: Annotated[bool, typer.Option(help="Also evaluate the base model, side by side.")] = False,
    scenario: Annotated[str | None, typer.Option(help="Run this scenario's metric (generation + scoring); "
                                                 "outputs and scores go to RUN/scenario/{tuned,base}/ or "
                                                 "--out.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="With --scenario: where scores.json and "
                                                 "outputs.jsonl go (default RUN/scenario/).")] = None,
    max_records: Annotated[int | None, typer.Option(help="With --scenario: score at most this many records.")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Eval loss, perplexity and mean token accuracy (assistant tokens only, as in training); with --scenario, the
    scenario's own metric (accuracy, F1, chrF, ...) with every output saved beside the scores."""
    from slmtune.evaluation.loss import evaluate_file
    from slmtune.inference.generate import ChatModel, Source, locate

    if (target is None) == (model is None):
        fail("give what to evaluate: a TARGET (run directory, adapter, checkpoint, model) or --model, not both", 2)
    target = target or model
    if scenario is not None:
        _eval_scenario(target, scenario, data, compare_base, out_dir, max_records, batch_size, as_json)
        return
    if data is None:
        fail("--data is needed (the data to score, in any format train reads), or --scenario NAME", 2)
    src = locate(target)
    results = {}
    with err.status(f"evaluating {target}"):
        results["model"] = evaluate_file(ChatModel(src), data, batch_size=batch_size)
        if compare_base:
            results["base"] = evaluate_file(ChatModel(Source(src.base, src.base_dir)), data, batch_size=batch_size)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table = Table(title=f"{data}: {results['model']['examples']} examples, {results['model']['tokens']} scored tokens")
    table.add_column("metric")
    table.add_column(str(target))
    if compare_base:
        table.add_column(f"base ({src.base})")
        table.add_column("change")
    for key in ("loss", "perplexity", "mean_token_accuracy"):
        row = [key, f"{results['model'][key]:.4f}"]
        if compare_base:
            b = results["base"][key]
            row += [f"{b:.4f}", f"{100 * (results['model'][key] - b) / b:+.1f}%" if b else "-"]
        table.add_row(*row)
    out.print(table)


def _eval_scenario(target, name, data, compare_base, out_dir, max_records, batch_size, as_json) -> None:
    from slmtune.inference.generate import ChatModel, Source, locate
    from slmtune.scenarios.catalog import build_meta, get
    from slmtune.scenarios.evaluate import evaluate_scenario
    from slmtune.scenarios.pipeline import heldout_records, load_info
    from slmtune.scenarios.records import load_records

    try:
        sc = get(name)
    except ValueError as e:
        fail(str(e), 2)
    run_dir = Path(target) if Path(target, "config.yaml").exists() else None
    info = load_info(run_dir) if run_dir else None
    if info and info["name"] != name:
        fail(f"{target} was trained on scenario {info['name']!r}, not {name!r}", 2)
    records = load_records(data, name) if data else (heldout_records(run_dir) if run_dir else [])
    if not records:
        fail("no records to score: give --data FILE (the scenario's records)", 2)
    records = records[:max_records] if max_records else records
    meta = info["meta"] if info else build_meta(name, records)
    base_out = out_dir or ((run_dir / "scenario") if run_dir else Path("runs") / f"eval-{name}")
    src = locate(target)
    results = {}
    for kind, source in [("tuned", src)] + ([("base", Source(src.base, src.base_dir))] if compare_base else []):
        with err.status(f"{name}: scoring the {kind} model on {len(records)} records"):
            results[kind] = evaluate_scenario(ChatModel(source), name, meta, records, base_out / kind,
                                              batch_size=batch_size)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table = Table(title=f"{name}: {len(records)} records; outputs in {base_out}/")
    table.add_column("metric")
    for kind in results:
        table.add_column(kind)
    for m in sc.metrics:
        if m in results["tuned"]:
            table.add_row(m, *[f"{results[k][m]:.4g}" for k in results])
    out.print(table)


@handle_errors
def report(run: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Write RUN/report.md with PNG plots: loss curves, scenario metric before/after, confusion matrix."""
    from slmtune.scenarios.report import write_report

    path = write_report(run)
    out.print(f"wrote {path} (plots in {path.parent / 'plots'})")
