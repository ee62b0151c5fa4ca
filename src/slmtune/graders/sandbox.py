"""Python graders run here: one sandboxed child process per batch of cases, never in the server or worker process.

The child (``_child.py``) confines itself before any user code runs — resource limits, ``nobody`` when started as
root, Landlock (read-only access to the Python installation and nothing else) and a seccomp filter (no sockets, no new
processes, no signals to others). This side gives it an empty environment and an empty working directory, enforces
the wall clock (the whole process group is killed) and reads back at most ``MAX_OUTPUT`` bytes.

Where the kernel lacks Landlock or libseccomp is missing, :func:`unavailable` says so and python graders are refused
(there is no unconfined fallback).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CHILD = Path(__file__).with_name("_child.py")
MAX_OUTPUT = 4 * 2**20  # bytes read back from one child


@dataclass(frozen=True)
class Limits:
    """What one child may use. The defaults are documented in docs/rft.md."""

    memory_mb: int = 1024  # address space
    cpu_s: int = 60  # CPU seconds for the batch
    wall_s: float = 120.0  # wall clock for the batch, start-up included


@dataclass
class Outcome:
    """One case's result: a score, or the error that scored it 0."""

    score: float | None = None
    error: str | None = None


class SandboxUnavailable(RuntimeError):
    pass


@cache
def unavailable() -> str | None:
    """Why python graders cannot run on this machine, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "python graders need Linux (Landlock and seccomp confine them)"
    try:
        from landlock.plumbing import landlock_abi_version

        if landlock_abi_version() < 1:
            return "python graders need a kernel with Landlock enabled (Linux 5.13+, CONFIG_SECURITY_LANDLOCK)"
    except Exception as e:  # noqa: BLE001 - any failure to reach Landlock means no sandbox
        return f"python graders need a kernel with Landlock enabled ({type(e).__name__}: {e})"
    try:
        import pyseccomp

        pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    except Exception as e:  # noqa: BLE001 - libseccomp missing or unusable
        return f"python graders need libseccomp (Debian: apt install libseccomp2) ({type(e).__name__}: {e})"
    return None


@cache
def _read_paths() -> tuple[str, ...]:
    """What the child may read: the interpreter, the standard library and the installed packages (never the
    current directory or the home directory beyond these)."""
    paths = {sys.base_prefix, sys.prefix, os.path.realpath(sys.executable)}
    paths |= {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {p for p in sys.path if p and os.path.isdir(p) and "site-packages" in p}
    paths |= {"/usr/lib", "/lib", "/lib64", "/usr/lib64"}  # shared libraries of extension modules
    return tuple(sorted(p for p in paths if p and os.path.exists(p)))


def run(source: str, cases: list[dict], limits: Limits | None = None) -> tuple[list[Outcome], str | None]:
    """Grade each case (``{"sample", "item"}``) with ``source``'s ``grade``; returns the outcomes and, when the
    grader could not run at all (a syntax error, no ``grade``, a dead child), why."""
    reason = unavailable()
    if reason:
        raise SandboxUnavailable(reason)
    limits = limits or Limits()
    payload = json.dumps({"source": source, "cases": cases,
                          "limits": {"memory_mb": limits.memory_mb, "cpu_s": limits.cpu_s,
                                     "read_paths": list(_read_paths())}}).encode()
    workdir = tempfile.mkdtemp(prefix="slmtune-grader-")
    os.chmod(workdir, 0o555)
    try:
        raw, stopped = _run_child(payload, workdir, limits)
    finally:
        os.chmod(workdir, 0o700)
        shutil.rmtree(workdir, ignore_errors=True)
    outcomes = [Outcome() for _ in cases]
    fatal = None
    done = False
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(msg, dict):
            continue
        if "fatal" in msg:
            fatal = str(msg["fatal"])
        elif msg.get("done"):
            done = True
        elif isinstance(msg.get("i"), int) and 0 <= msg["i"] < len(cases):
            o = outcomes[msg["i"]]
            if isinstance(msg.get("score"), int | float):
                o.score = float(msg["score"])
            else:
                o.error = str(msg.get("error", "no score"))[:2000]
    if not done and fatal is None:
        fatal = stopped or "the grader process ended before grading every case"
    if fatal:
        for o in outcomes:
            if o.score is None and o.error is None:
                o.error = fatal
    return outcomes, fatal


def _run_child(payload: bytes, workdir: str, limits: Limits) -> tuple[bytes, str | None]:
    proc = subprocess.Popen(
        [sys.executable, "-I", "-B", str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, cwd=workdir, env={"LANG": "C.UTF-8"}, start_new_session=True, close_fds=True)
    chunks: list[bytes] = []
    size = [0]

    def read():
        while size[0] <= MAX_OUTPUT:
            b = proc.stdout.read1(65536)
            if not b:
                return
            chunks.append(b)
            size[0] += len(b)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    deadline = time.monotonic() + limits.wall_s
    stopped = None
    while reader.is_alive() and time.monotonic() < deadline:
        reader.join(0.05)
        if size[0] > MAX_OUTPUT:
            stopped = f"the grader wrote more than {MAX_OUTPUT // 2**20} MB of results"
            break
    if reader.is_alive() and stopped is None:
        stopped = f"the grader ran past its wall-clock limit ({limits.wall_s:g} s)"
    _kill_group(proc)
    reader.join(5)
    rc = proc.returncode
    if stopped is None and rc is not None and rc < 0:
        sig = -rc
        stopped = ("the grader ran past its CPU-time limit" if sig == signal.SIGXCPU
                   else f"the grader process was killed by signal {sig}")
    return b"".join(chunks), stopped


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
