"""The training child process: started by the worker (spawn), it leads its own process group (so a cancel or a lost
lease kills torchrun and its ranks too), dies with its worker, runs at lower priority than the API, and writes its
events through a ``DBSink``. Its exit code tells the worker how it ended (``states.ExitCode``)."""

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


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(ExitCode.FAILED)


def child_main(db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool,
                parent_pid: int) -> None:
    _die_with_parent(parent_pid)
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
    """The training child on this machine: a spawned process leading its own process group."""

    def __init__(self, db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool):
        self.proc = mp.get_context("spawn").Process(
            target=child_main, args=(db_url, job_id, token, ft_name, cfg, resume, os.getpid()), daemon=True)
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
