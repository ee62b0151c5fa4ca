"""The job queue on the database, SQL only: claims, leases, fencing, compare-and-set status changes.

* **Claims** are a compare-and-set ``UPDATE … WHERE id = ? AND status = ? AND lease expired``: exactly one worker
  wins, on SQLite and PostgreSQL alike, with no lock held while training. Each claim bumps ``jobs.claims``; that
  number is the claim's **fencing token**: every later write of the worker and of its training child carries
  ``WHERE claims = token``, so a worker whose job was taken over writes nothing more.
* **Leases** run on the database's clock (``Database.clock``) and are renewed by a heartbeat thread from the claim
  on. A renewal that finds the token gone means the lease was lost.
* **Database outages**: ``retrying`` backs off while the database is away; callers decide what goes on meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from slmtune.service.db import Database, JobRow
from slmtune.service.states import JobStatus

log = logging.getLogger("slmtune.worker")

MAX_ATTEMPTS = 5
DB_DOWN = (OperationalError, DBAPIError)  # connection refused / reset / server restarting


class JobRefused(RuntimeError):
    """The executor can never run this job as configured (a Ray cluster with no node that has its resources): the
    job fails with this message rather than going back to the queue."""


class LeaseLost(RuntimeError):
    """Another worker holds the job now (its claim bumped the fencing token)."""


def fence(s, job_id: str, token: int) -> None:
    """In a write transaction: take the job row's write lock and check the claim is still ours."""
    res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token)
                    .values(claims=JobRow.claims))
    if res.rowcount != 1:
        raise LeaseLost(job_id)


def retrying(fn, *, stop: threading.Event | None = None, what: str = "database", max_wait: float = 600.0):
    """Call ``fn`` until the database answers: backoff 0.5 s doubling to 10 s, for at most ``max_wait`` s."""
    delay, deadline = 0.5, time.monotonic() + max_wait
    while True:
        try:
            return fn()
        except DB_DOWN as e:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                raise
            log.warning("%s unreachable (%s); retrying in %.1f s", what, type(e).__name__, delay)
            time.sleep(delay)
            delay = min(10.0, delay * 2)


class Lease:
    """The heartbeat of one claim: renews it on database time; sets ``lost`` (and calls ``on_lost``) once the
    token is gone. While the database is unreachable it keeps trying; training goes on meanwhile."""

    def __init__(self, db: Database, job_id: str, token: int, worker_id: str, seconds: float, on_lost):
        self.db, self.job_id, self.token, self.worker_id, self.seconds = db, job_id, token, worker_id, seconds
        self.on_lost = on_lost
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def renew(self) -> bool:
        with self.db.session() as s:
            res = s.execute(update(JobRow).where(JobRow.id == self.job_id, JobRow.claims == self.token)
                            .values(lease_until=self.db.clock() + self.seconds, worker_id=self.worker_id))
            return res.rowcount == 1

    def _loop(self) -> None:
        while not self._stop.wait(max(0.2, self.seconds / 3)):
            try:
                ok = self.renew()
            except DB_DOWN as e:
                log.warning("lease of %s: database unreachable (%s); training goes on", self.job_id, type(e).__name__)
                continue
            except Exception:  # the heartbeat must outlive any one failure
                log.exception("lease of %s: renewal failed", self.job_id)
                continue
            if not ok:
                log.warning("lease of %s lost (another worker claimed it): stopping its training", self.job_id)
                self.lost.set()
                self.on_lost()
                return


def claim(db: Database, worker_id: str, lease_seconds: float) -> tuple[str, int] | None:
    """Claim the oldest claimable job (new, queued, or running with an expired lease): compare-and-set, one winner;
    returns (job id, fencing token) or None."""
    clock = db.clock()
    expired = or_(JobRow.lease_until.is_(None), JobRow.lease_until < clock)
    with db.session() as s:
        candidates = s.execute(
            select(JobRow.id, JobRow.status).where(
                JobRow.status.in_(JobStatus.claimable()), expired,
            ).order_by(JobRow.seq).limit(10)
        ).all()
    for job_id, status in candidates:
        with db.session() as s:
            res = s.execute(
                update(JobRow)
                .where(and_(JobRow.id == job_id, JobRow.status == status, expired))
                .values(worker_id=worker_id, lease_until=clock + lease_seconds,
                        attempts=JobRow.attempts + 1, claims=JobRow.claims + 1)
            )
            if res.rowcount == 1:
                token = s.scalar(select(JobRow.claims).where(JobRow.id == job_id))
                return job_id, token
    return None


def release(db: Database, job_id: str, token: int, requeue: bool) -> None:
    """Give a claim back (nothing is written if another worker took it over meanwhile)."""
    with db.session() as s:
        values = {"lease_until": None, "worker_id": None}
        if requeue:  # a clean stop, not a failed attempt
            values |= {"attempts": JobRow.attempts - 1}
        s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token).values(**values))
        if requeue:
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token,
                                           JobRow.status == JobStatus.RUNNING).values(status=JobStatus.QUEUED))


def set_status(s, job_id: str, token: int, expected, **values) -> bool:
    """Compare-and-set a status change: only while the claim is ours and the status is one of ``expected``."""
    expected = (expected,) if isinstance(expected, str) else tuple(expected)
    res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token,
                                         JobRow.status.in_(expected)).values(**values))
    return res.rowcount == 1
