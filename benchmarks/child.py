"""The benchmarks measure each configuration in a fresh child process (its own peak memory, nothing warm from the
previous one). The child prints one ``RESULT {json}`` line with :func:`emit`; the parent starts it and reads that
line with :func:`run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PREFIX = "RESULT "


def emit(result: dict) -> None:
    print(PREFIX + json.dumps(result), flush=True)


def run(args: list[str], env: dict | None = None) -> tuple[dict | None, subprocess.CompletedProcess]:
    """Run ``python ARGS``; returns the child's result (None when it printed none) and the finished process."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(PREFIX)), None)
    return (json.loads(line[len(PREFIX):]) if line else None), proc


def last_error(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip().splitlines() or ["?"])[-1]


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """A process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that across fork and exec, so a child
    of a heavy parent would report the parent's peak."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
