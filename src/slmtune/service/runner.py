"""The training child process: it leads its own process group (so a cancel or a lost lease kills torchrun and its
ranks too), dies with its worker, runs at lower priority than the API, and writes its events through a ``DBSink``.
Its exit code tells the worker how it ended (``states.ExitCode``).

Children fork from a multiprocessing *forkserver* that imported the engine once (torch, transformers, peft, the
recipe): a spawned child paid those imports on every job, 5-9 s before its first step on 2 cores. The forkserver is
a fresh interpreter started on first use (never a fork of the threaded server), and each child takes the worker's
current environment and working directory, as a spawned one would. A child dies with the forkserver (its parent,
PR_SET_PDEATHSIG), which exits when its worker does; a child that finds its worker already gone exits at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

from slmtune.scenarios.run import fine_tune
from slmtune.service.db import Database
from slmtune.service.job_events import DBSink
from slmtune.service.states import ExitCode
from slmtune.training.result import RunStatus

JOB_NICE = 10  # niceness of training processes (their launchers and ranks inherit it)
JOB_GROUP_ENV = "SLMTUNE_JOB_GROUP"  # set in the training child: launchers keep their processes in its group


# What the forkserver imports once: this module, and through it the engine every job runs (training.run, its
# Trainer subclass, transformers.trainer, peft) — what a spawned child took 5-9 s to import.
PRELOAD = ["slmtune.service.runner"]
_context = None


def context():
    """The multiprocessing context training children start from (the forkserver, its preload set on first use)."""
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _die_with_parent(worker_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the forkserver, which exits when the worker does
    except OSError:
        pass
    try:
        os.kill(worker_pid, 0)
    except ProcessLookupError:  # the worker died before prctl took effect
        os._exit(ExitCode.FAILED)


def child_main(db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool,
               worker_pid: int, env: dict[str, str], cwd: str) -> None:
    _die_with_parent(worker_pid)
    os.environ.clear()  # the worker's environment now, not the forkserver's at its start
    os.environ.update(env)
    os.chdir(cwd)
    os.setpgid(0, 0)  # lead a process group: the worker's cancel or lost lease kills all of it, launchers included
    # Training is batch work beside an interactive API (often in the same server): it yields the CPU to requests.
    # (200 API clients for 60 s beside a job on 2 cores: p50 3.5 s before, 2.5 s after; docs/benchmarks.md.)
    os.nice(JOB_NICE)
    os.environ[JOB_GROUP_ENV] = "1"
    os.umask(0o077)  # checkpoints, adapters and logs of a tenant's job: the service's user alone reads them
    db = Database(db_url)
    sink = DBSink(db, job_id, token, ft_name)
    try:
        result = fine_tune(cfg, resume=resume, sinks=[sink])
        # None: a node other than 0 of a multi-node job (node 0 reports the run)
        code = ExitCode.OK if result is None or result.status == RunStatus.SUCCEEDED else ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    except BaseException:  # noqa: BLE001 - the engine already emitted the error as an event
        code = ExitCode.FAILED
    try:
        sink.close()
    except Exception:  # noqa: BLE001 - events that never reached the database: the job cannot be trusted
        code = ExitCode.FAILED
    os._exit(code)


class LocalRun:
    """The training child on this machine: a process forked from the forkserver, leading its own process group."""

    def __init__(self, db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool):
        self.proc = context().Process(
            target=child_main, args=(db_url, job_id, token, ft_name, cfg, resume, os.getpid(), dict(os.environ),
                                     os.getcwd()), daemon=True)
        self.proc.start()

    def alive(self) -> bool:
        return self.proc.is_alive()

    def wait(self, seconds: float | None) -> None:
        self.proc.join(seconds)

    def interrupt(self) -> None:
        self.signal(signal.SIGINT)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)  # the child leads its group: torchrun and its ranks go too
        self.proc.join(5)

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    @property
    def exitcode(self) -> int | None:
        return self.proc.exitcode

    def placement(self) -> str | None:
        return None  # on the worker's own machine: nothing to report

    def describe(self) -> dict:
        return {"executor": "local", "pid": self.proc.pid}

    error = None  # a local child's failure is in its events
