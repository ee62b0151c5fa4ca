"""Where a job's training process runs. The worker claims the job, keeps its lease and watches it; an executor
starts the training and hands back a :class:`RunHandle` the worker's watch loop drives the same way whatever runs it:

* ``local`` (the default): a spawned child process on the worker's machine (:mod:`slmtune.service.runner`).
* ``ray``: the same child, started by a Ray actor on whichever node of a Ray cluster has the job's resources
  (:mod:`slmtune.service.ray_executor`; ``pip install 'slmtune[ray]'``).
"""

from __future__ import annotations

from typing import Protocol

from slmtune.service.runner import LocalRun
from slmtune.service.settings import Settings


class RunHandle(Protocol):
    """A started job's training, as the worker sees it (``runner.LocalRun``, ``ray_executor.RayRun``)."""

    error: str | None  # why the executor could not run it (the job fails with this), else None

    def alive(self) -> bool: ...

    def wait(self, seconds: float | None) -> None:
        """Return when it has ended or ``seconds`` have passed."""

    def interrupt(self) -> None:
        """Save a checkpoint and stop (exit code ``ExitCode.INTERRUPTED``)."""

    def kill(self) -> None:
        """Stop now, every process of it."""

    @property
    def exitcode(self) -> int | None:
        """``states.ExitCode`` once it has ended, else None."""

    def placement(self) -> str | None:
        """A note for the job's events: where it runs, or what it waits for (None: nothing new to say)."""

    def describe(self) -> dict | None:
        """Where it runs, for the run's starts.jsonl (None until placed)."""


class Executor(Protocol):
    name: str

    def start(self, db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool) -> RunHandle: ...


class LocalExecutor:
    name = "local"

    def start(self, db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool) -> LocalRun:
        return LocalRun(db_url, job_id, token, ft_name, cfg, resume)


def make_executor(settings: Settings) -> Executor:
    """The executor ``settings.executor`` names; the Ray one connects to ``settings.ray_address`` (and says clearly
    when Ray is missing or nothing answers there)."""
    if settings.executor == "ray":
        from slmtune.service.ray_executor import (
            RayExecutor,  # Ray is an optional extra: imported only when used
        )

        return RayExecutor(settings)
    return LocalExecutor()
