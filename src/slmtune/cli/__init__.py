"""The ``slmtune`` command: a thin layer that parses, builds a config, calls the library and renders events.

One module per command group (``train`` holds train and plan, ``sweep``, ``evaluate`` eval and report, ``chat``,
``models``, ``data``, ``export``, ``service`` serve and worker, ``keys``, ``db``); ``common`` holds the consoles and the
mapping of library errors to exit codes. Library imports inside the commands are deliberately lazy (see ``common``).

Exit codes: 0 success, 1 bad data / model not available / run failed, 2 bad usage or configuration,
130 interrupted (a checkpoint was saved; resume with ``--resume``).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from slmtune.cli import chat, data, db, evaluate, export, keys, models, service, sweep, train

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    help="Fine-tune small language models (SmolLM2, Phi-3, Llama-style) on CPU or GPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show third-party messages slmtune "
                                                  "filters as noise (see slmtune/noise.py).")] = False) -> None:
    """Fine-tune small language models (SmolLM2, Phi-3, Llama-style) on CPU or GPU."""
    if verbose:
        from slmtune import noise

        noise.show_all()


app.command("train")(train.train_command)
app.add_typer(models.app, name="models")
app.add_typer(data.app, name="data")
app.command("chat")(chat.chat)
app.command("eval")(evaluate.eval_)
app.command("report")(evaluate.report)
app.command("plan")(train.plan_cmd)
app.command("sweep")(sweep.sweep)
app.add_typer(export.app, name="export")
app.command("serve")(service.serve)
app.command("worker")(service.worker)
app.add_typer(keys.app, name="keys")
app.add_typer(db.app, name="db")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
