"""A job's status and a training child's exit code: the two sets of states the service moves jobs through, each
owning which of its members end a job (``terminal``) or count against a project's active-job limit (``active``).

Statuses are the OpenAI fine-tuning API's; they are stored in the jobs table as their string
values, and a ``StrEnum`` compares equal to its string, so rows, queries and wire bodies need no conversion.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"  # created; the worker checks its files and plans it
    QUEUED = "queued"  # waiting for a worker (again, after a pause or a worker that stopped)
    RUNNING = "running"  # a worker holds its lease and its training child runs
    PAUSED = "paused"  # stopped at a checkpoint on request; resume puts it back in the queue
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def terminal(cls) -> frozenset[JobStatus]:
        """Statuses a job never leaves."""
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.CANCELLED})

    @classmethod
    def active(cls) -> frozenset[JobStatus]:
        """Statuses that count against ``max_active_jobs_per_project`` and that cancel applies to."""
        return frozenset(cls) - cls.terminal()

    @classmethod
    def claimable(cls) -> tuple[JobStatus, ...]:
        """Statuses a worker may claim a job in (a running one only once its holder's lease has expired)."""
        return cls.VALIDATING_FILES, cls.QUEUED, cls.RUNNING


class ExitCode(IntEnum):
    """How a training child ends; the worker reads it to decide the job's next status."""

    OK = 0  # trained and saved: the job succeeds
    FAILED = 1  # an error (logged as the job's last event): the job fails
    INTERRUPTED = 3  # stopped at a checkpoint (pause, or the worker stopping): paused or back to the queue
    LEASE_LOST = 4  # another worker holds the job now: this child stops without touching it
    NODE_LOST = 5  # (Ray executor) the node running the job died: back to the queue, resumed from a checkpoint
