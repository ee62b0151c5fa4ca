"""A real server on a free loopback port, driven by the real `openai` SDK.

Every test module gets fresh storage: a temporary SQLite file, or (with SLMTUNE_TEST_POSTGRES_URL set) a fresh
schema in that PostgreSQL database; the database-backed tests run once per backend.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

import pytest

from slmtune.training.distributed import free_port

os.environ["SLMTUNE_TEST_MODELS"] = "1"

_SCHEMAS: list[str] = []
BACKENDS = ["sqlite"] + (["postgres"] if os.environ.get("SLMTUNE_TEST_POSTGRES_URL") else [])


def make_db_url(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'slmtune.db'}"
    import psycopg

    base = os.environ["SLMTUNE_TEST_POSTGRES_URL"]
    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    _SCHEMAS.append(schema)
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


class Server:
    """uvicorn running create_app() in a thread; .stop() and .start() again simulate a restart."""

    def __init__(self, settings, workers: int):
        self.settings, self.workers = settings, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = None
        self.server = None

    def start(self) -> Server:
        import uvicorn

        from slmtune.service.app import create_app

        self.app = create_app(self.settings, workers=self.workers)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        # uvicorn waits for every request in flight: a handler that never returns would hold shutdown forever
        assert not self.thread.is_alive(), "the server did not shut down within 60 s (a request never ended)"

    def client(self, key: str = "none", max_retries: int = 0, **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=key, max_retries=max_retries, **kw)

    def new_key(self, project: str) -> str:
        from slmtune.service.auth import create_key

        with self.app.state.db.session() as s:
            return create_key(s, project)


def start_server(backend: str, tmp: Path, workers: int = 1, auth: bool = True, **kw) -> Server:
    from slmtune.service.settings import Settings

    settings = Settings(db_url=make_db_url(backend, tmp), data_dir=tmp / "data", auth=auth, lease_seconds=3.0, **kw)
    return Server(settings, workers).start()


@pytest.fixture(scope="session", autouse=True)
def _drop_test_schemas():
    yield
    if _SCHEMAS:
        import psycopg

        with psycopg.connect(os.environ["SLMTUNE_TEST_POSTGRES_URL"], autocommit=True) as conn:
            for schema in _SCHEMAS:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


def sqlite_is_enough(backend: str, why: str) -> None:
    """Skip the test on every backend but SQLite: what it proves does not depend on the database (``why``)."""
    if backend != "sqlite":
        pytest.skip(f"one backend is enough: {why}")


@pytest.fixture(scope="module")
def server(backend, tmp_path_factory):
    """A server with one in-process worker and auth on."""
    srv = start_server(backend, tmp_path_factory.mktemp("svc"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_server(backend, tmp_path_factory):
    """A server with no worker: jobs stay where the API left them (for API-only tests)."""
    srv = start_server(backend, tmp_path_factory.mktemp("api"), workers=0)
    yield srv
    srv.stop()


def wait_for(fn, timeout: float = 180, interval: float = 0.3):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {fn}")
        time.sleep(interval)


def wait_status(client, job_id: str, statuses, timeout: float = 180):
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    return wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in statuses and j, timeout)


class ServeProcess:
    """`slmtune serve` in a process of its own, as a user starts it (signals reach it for real)."""

    def __init__(self, db_url: str, data_dir: Path, *args: str):
        import subprocess
        import sys

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        exe = Path(sys.executable).parent / "slmtune"
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(self.port), "--db", db_url, "--data-dir", str(data_dir),
             "--lease-seconds", "3", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "SLMTUNE_TEST_MODELS": "1"},
            start_new_session=True)
        import httpx

        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.time() < deadline, self.output()
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def client(self, key: str = "none", **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=key, max_retries=0, **kw)

    def kill(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
