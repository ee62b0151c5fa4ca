"""Helpers shared by the tests: small chat records, JSONL writing, running the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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



def run_cli(*args: str, env: dict | None = None, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    """Run the installed `slmtune` entry point as a user would."""
    exe = Path(sys.executable).parent / "slmtune"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)
