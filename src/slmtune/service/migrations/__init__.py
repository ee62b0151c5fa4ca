"""The service database's schema version: Alembic migrations shipped in the package, checked at every start.

``ensure(url, migrate=...)`` is what ``slmtune serve``, ``slmtune worker`` and ``slmtune keys`` call first:

* an empty database (no slmtune table) is created at the newest revision (head);
* a database made by slmtune 0.1 (``create_all``, no ``alembic_version`` table) is recognised by its tables as the
  baseline revision, and stamped so (without any other change) when it is upgraded;
* an older revision is upgraded only when asked (``--migrate`` / ``slmtune db upgrade``), otherwise start-up stops
  and names the command to run;
* a revision this release does not know (the database was upgraded by a newer slmtune) is refused and not touched.

Every check and upgrade runs in one transaction that first takes a lock (``pg_advisory_xact_lock`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite) and then reads the revision again, so two servers starting at once on one database
migrate it once; on PostgreSQL DDL is transactional, so a migration that fails half-way leaves the old revision.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from slmtune import __version__

HERE = Path(__file__).parent  # env.py, script.py.mako and versions/ beside this module
BASELINE = "0001"
# the tables slmtune 0.1 created with create_all: their presence without alembic_version marks such a database
BASELINE_TABLES = frozenset({"projects", "api_keys", "files", "jobs", "job_events", "job_checkpoints"})
_LOCK_KEY = 0x736C6D74  # "slmt": the advisory lock all slmtune migrators take on PostgreSQL


class SchemaError(RuntimeError):
    """The database's schema cannot be used by this release as it is; the message says what to run."""


def config(extra_versions: Sequence[Path] = ()) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    if extra_versions:  # tests add a revision of their own on top of head
        cfg.set_main_option("version_locations", ":".join(str(p) for p in (HERE / "versions", *extra_versions)))
    return cfg


def heads(cfg: Config | None = None) -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(cfg or config()).get_heads())


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool)
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})

    # pysqlite commits before DDL on its own; take transactions over so a migration is one (the SQLAlchemy recipe)
    @event.listens_for(engine, "connect")
    def _no_implicit(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA busy_timeout=60000")

    @event.listens_for(engine, "begin")
    def _immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock at once: one migrator at a time

    return engine


@contextmanager
def locked(url: str) -> Iterator[Connection]:
    """A connection in a transaction that holds the migration lock; committed when the block ends."""
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            yield conn
    finally:
        engine.dispose()


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _run(cfg: Config, conn: Connection, fn, *args) -> None:
    cfg.attributes["connection"] = conn
    fn(cfg, *args)


def state(conn: Connection, cfg: Config | None = None) -> str:
    """``empty``, ``legacy`` (0.1, no version table), ``head``, ``behind``, ``ahead`` (unknown revision)."""
    cfg = cfg or config()
    rev = current(conn)
    if rev is None:
        tables = set(inspect(conn).get_table_names()) & BASELINE_TABLES
        if not tables:
            return "empty"
        if tables == BASELINE_TABLES:
            return "legacy"
        raise SchemaError(f"the database has some slmtune tables ({', '.join(sorted(tables))}) but not "
                          f"{', '.join(sorted(BASELINE_TABLES - tables))}, and no schema revision: it was not made "
                          "by slmtune, or is damaged; restore a backup or point --db at another database")
    script = ScriptDirectory.from_config(cfg)
    if rev in script.get_heads():
        return "head"
    try:
        script.get_revision(rev)
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
        return "ahead"
    return "behind"


def ensure(url: str, migrate: bool = False, cfg: Config | None = None) -> str:
    """Make the database usable by this release or raise SchemaError; returns what was done, for the log."""
    cfg = cfg or config()
    head = heads(cfg)[0]
    with locked(url) as conn:
        st = state(conn, cfg)
        if st == "head":
            return f"schema at {head}"
        if st == "empty":
            _run(cfg, conn, command.upgrade, "head")
            return f"schema created at {head}"
        if st == "ahead":
            raise SchemaError(f"the database is at schema revision {current(conn)}, which this slmtune "
                              f"({_version()}, newest revision {head}) does not know: a newer slmtune upgraded it. "
                              "Run that release, or downgrade the database with it first "
                              "(`slmtune db downgrade`); nothing was changed")
        rev = BASELINE if st == "legacy" else current(conn)
        if not migrate:  # nothing is written unless asked, not even the baseline stamp
            made = f" (made by slmtune 0.1: its tables are revision {BASELINE})" if st == "legacy" else ""
            raise SchemaError(f"the database is at schema revision {rev}{made}; this slmtune needs {head}. Back it "
                              "up, then run `slmtune db upgrade` with the same --db, or start with --migrate")
        done = ""
        if st == "legacy":  # made by create_all before migrations existed: it is the baseline, as it stands
            _run(cfg, conn, command.stamp, BASELINE)
            done = f"stamped a slmtune 0.1 database {BASELINE}; "
        before = current(conn)
        _run(cfg, conn, command.upgrade, "head")
        return f"{done}schema upgraded {before} → {head}"


def upgrade(url: str, revision: str = "head", cfg: Config | None = None) -> tuple[str | None, str | None]:
    """``slmtune db upgrade``: (revision before, revision after); a 0.1 database is stamped as baseline first."""
    cfg = cfg or config()
    with locked(url) as conn:
        st = state(conn, cfg)
        if st == "ahead":
            raise SchemaError(f"the database is at schema revision {current(conn)}, newer than this slmtune knows; "
                              "nothing was changed")
        if st == "legacy":
            _run(cfg, conn, command.stamp, BASELINE)
        before = current(conn)
        _run(cfg, conn, command.upgrade, revision)
        return before, current(conn)


def downgrade(url: str, revision: str, cfg: Config | None = None) -> tuple[str | None, str | None]:
    """``slmtune db downgrade REV``: before installing an older release (its revision is in ``db history``)."""
    cfg = cfg or config()
    with locked(url) as conn:
        if state(conn, cfg) == "ahead":
            raise SchemaError("the database is at a revision this slmtune does not know; downgrade it with the "
                              "release that upgraded it")
        before = current(conn)
        _run(cfg, conn, command.downgrade, revision)
        return before, current(conn)


def revision_of(url: str) -> tuple[str | None, str]:
    """(revision, state) without changing anything: ``slmtune db current``."""
    with locked(url) as conn:
        return current(conn), state(conn)


def history(cfg: Config | None = None) -> list[tuple[str, str | None, str]]:
    """(revision, down revision, first line of its message), oldest first."""
    script = ScriptDirectory.from_config(cfg or config())
    revs = list(script.walk_revisions())[::-1]
    return [(r.revision, r.down_revision, (r.doc or "").strip().splitlines()[0]) for r in revs]


def check(url: str, cfg: Config | None = None) -> None:
    """``alembic check``: raises ``AutogenerateDiffsDetected`` when the models differ from the migrations."""
    cfg = cfg or config()
    with locked(url) as conn:
        _run(cfg, conn, command.check)


def _version() -> str:
    return __version__


__all__ = ["BASELINE", "SchemaError", "check", "downgrade", "ensure", "heads", "history", "revision_of", "upgrade"]
