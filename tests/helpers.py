"""Helpers shared by the tests: small chat records, JSONL writing, running the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

FACTS = [("color", "blue"), ("animal", "cat"), ("fruit", "apple"), ("city", "Paris")]


def chat_record(key: str, value: str, system: bool = True) -> dict:
    msgs = [{"role": "system", "content": "You answer in one sentence."}] if system else []
    msgs += [{"role": "user", "content": f"What is your favorite {key}?"},
             {"role": "assistant", "content": f"My favorite {key} is {value}."}]
    return {"messages": msgs}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path



# Commands that must run in a process of their own: they serve until signalled.
OWN_PROCESS = ("serve", "worker")


def run_cli(*args: str, env: dict | None = None, timeout: int = 600, input: str | None = None,
            process: bool | None = None) -> subprocess.CompletedProcess:
    """Run `slmtune ARGS` as a user would and return its exit code, stdout and stderr.

    In this process through Typer's runner (the same app object the entry point calls: the same parsing, output and
    exit codes, without a Python start-up and the torch/transformers imports, seconds each) unless ``process`` or,
    with ``process`` unset, the command serves (``OWN_PROCESS``): then the installed entry point in a subprocess,
    under ``timeout``. ``process=False`` runs a serving command here too, for one that must refuse before serving
    (its test then carries a ``timeout`` mark)."""
    if process is None:
        process = bool(args[:1]) and args[0] in OWN_PROCESS and "--help" not in args
    if process:
        exe = Path(sys.executable).parent / "slmtune"
        return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, input=input,
                              env={**os.environ, **(env or {})})
    from typer.testing import CliRunner

    from slmtune.cli import app

    r = CliRunner().invoke(app, list(args), input=input, env=env)
    stderr = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):  # as the interpreter would print it
        stderr += "".join(traceback.format_exception(r.exception))
    return subprocess.CompletedProcess(["slmtune", *args], r.exit_code, r.stdout, stderr)
