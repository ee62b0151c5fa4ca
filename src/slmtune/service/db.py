"""Service storage: SQLAlchemy 2 tables, one engine per URL (SQLite with WAL by default, PostgreSQL for scale).

The tables change only through a migration in ``migrations/versions`` (``slmtune.service.migrations``); a test runs
``alembic check`` so that a model edited without one fails CI.

Every row that a user can see belongs to one project. Public ids (``file-…``, ``ftjob-…``) are strings; an
integer ``seq`` column gives a stable newest-first order for cursor pagination.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from slmtune.paths import private_file

_B62 = string.ascii_letters + string.digits


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_B62) for _ in range(n))


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # a short name, e.g. "default"
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class ApiKey(Base):
    __tablename__ = "api_keys"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex; the key itself is never stored
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: never


class FileRow(Base):
    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    path: Mapped[str] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class JobRow(Base):
    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    method: Mapped[dict] = mapped_column(JSON)  # {"type": "supervised", "supervised": {"hyperparameters": {...}}}
    status: Mapped[str] = mapped_column(String(24), index=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    model_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list] = mapped_column(JSON, default=list)
    # worker bookkeeping
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims since the last (re)start by a user
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # every claim: the fencing token
    run_dir: Mapped[str | None] = mapped_column(Text, nullable=True)


class EventRow(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "dedupe_key", name="uq_event_dedupe"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Events that a resumed run would emit again (metrics of step N, checkpoint N, "started") carry a key;
    # the unique constraint keeps exactly one of each.
    dedupe_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class CheckpointRow(Base):
    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number", name="uq_ckpt_step"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(256), index=True)
    path: Mapped[str] = mapped_column(Text)


class Database:
    """An engine plus a session factory for one URL."""

    def __init__(self, url: str, pool_size: int | None = None):
        """``pool_size``: connections kept open. The API server admits at most as many requests at once as it has
        threads, and passes that count plus a margin for its workers (``create_app``, ``AdmissionMiddleware``), so
        no request waits for a connection that another request holds while waiting for a thread."""
        self.url = url
        kw: dict = {"future": True}
        if pool_size:
            kw |= {"pool_size": pool_size, "max_overflow": 10, "pool_timeout": 60}
        if url.startswith("sqlite"):
            kw["connect_args"] = {"check_same_thread": False, "timeout": 30}
            path = url.split("///", 1)[-1].split("?", 1)[0]
            if path and path != ":memory:":
                private_file(path)  # 0600 (SQLite gives its -wal and -shm files the database file's mode)
        else:
            kw["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kw)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def clock(self):
        """The database's own time in epoch seconds, as an SQL expression: leases are set and compared on it, so
        workers on machines whose clocks disagree still agree on when a lease ran out."""
        if self.engine.dialect.name == "postgresql":
            return func.extract("epoch", func.clock_timestamp())
        return (func.julianday("now") - 2440587.5) * 86400.0

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; survives restarts
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
