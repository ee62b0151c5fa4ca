"""Where a job's training process runs. The worker claims the job, keeps its lease and watches it; an executor
starts the training and hands back a handle the worker's watch loop drives the same way whatever runs it:

* ``local`` (the default): a spawned child process on the worker's machine (:mod:`slmtune.service.runner`).
* ``ray``: the same child, started by a Ray actor on whichever node of a Ray cluster has the job's resources
  (:mod:`slmtune.service.ray_executor`; ``pip install 'slmtune[ray]'``).

A handle has ``alive()``, ``wait(seconds)``, ``interrupt()`` (save a checkpoint and stop), ``kill()``,
``exitcode`` (``states.ExitCode``), ``error`` (why the executor could not run it, else None), ``placement()`` (a note
for the job's events: where it runs, or what it waits for) and ``describe()`` (where it runs, for starts.jsonl; None
until placed).
"""

from __future__ import annotations

from slmtune.service.runner import LocalRun
from slmtune.service.settings import Settings


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
