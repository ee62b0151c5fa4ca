"""Where a job's training process runs. The worker claims the job, keeps its lease and watches it; an executor
starts the training and hands back a handle the worker's watch loop drives the same way whatever runs it:

* ``local`` (the default): a spawned child process on the worker's machine (:mod:`slmtune.service.runner`).
* ``ray``: the same child, started by a Ray actor on whichever node of a Ray cluster has the job's resources
  (:mod:`slmtune.service.ray_executor`; ``pip install 'slmtune[ray]'``).

A handle has ``alive()``, ``wait(seconds)``, ``interrupt()`` (save a checkpoint and stop), ``kill()``,
``exitcode`` (``queue.EXIT_*``), ``error`` (why the executor could not run it, else None), ``placement()`` (a note
for the job's events: where it runs, or what it waits for) and ``describe()`` (where it runs, for starts.jsonl; None
until placed).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

from slmtune.service.runner import child_main
from slmtune.service.settings import Settings


class LocalRun:
    """The training child on this machine: a spawned process leading its own process group."""

    def __init__(self, db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool):
        self.proc = mp.get_context("spawn").Process(
            target=child_main, args=(db_url, job_id, token, ft_name, cfg, resume, os.getpid()), daemon=True)
        self.proc.start()

    def alive(self) -> bool:
        return self.proc.is_alive()

    def wait(self, seconds: float) -> None:
        self.proc.join(seconds)

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)  # the child leads its group: torchrun and its ranks go too
        self.proc.join(5)

    def _signal(self, sig: int) -> None:
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


class LocalExecutor:
    name = "local"

    def start(self, db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool) -> LocalRun:
        return LocalRun(db_url, job_id, token, ft_name, cfg, resume)


def make_executor(settings: Settings):
    """The executor ``settings.executor`` names; the Ray one connects to ``settings.ray_address`` (and says clearly
    when Ray is missing or nothing answers there)."""
    if settings.executor == "ray":
        from slmtune.service.ray_executor import (
            RayExecutor,  # Ray is an optional extra: imported only when used
        )

        return RayExecutor(settings)
    return LocalExecutor()
