"""`slmtune keys create` and `slmtune serve` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from slmtune.training.distributed import free_port
from tests.helpers import run_cli


def test_keys_create_then_serve_with_auth(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    r = run_cli("keys", "create", "--project", "cli-proj", "--db", db)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("sk-slm-")
    bad = run_cli("keys", "create", "--project", "Bad Name!", "--db", db)
    assert bad.returncode == 2 and "project name" in bad.stderr

    port = free_port()
    exe = Path(sys.executable).parent / "slmtune"
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--db", db, "--data-dir", str(tmp_path),
                             "--no-worker"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SLMTUNE_TEST_MODELS": "0"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.2)
        ok = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and [m["id"] for m in ok.json()["data"]] == ["smollm2-135m-instruct"]
        assert ok.headers["x-request-id"].startswith("req_")
        denied = httpx.get(base + "/v1/models")
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        missing = httpx.get(base + "/v1/nope", headers={"Authorization": f"Bearer {key}"})
        assert missing.status_code == 404 and "error" in missing.json()
    finally:
        proc.terminate()
        proc.wait(30)


def test_keys_list_and_revoke(tmp_path):
    from slmtune.service.auth import project_for_key
    from slmtune.service.db import Database
    from slmtune.service.errors import Unauthorized

    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    keys = [run_cli("keys", "create", "--project", p, "--db", db).stdout.strip() for p in ("alpha", "beta")]
    listed = run_cli("keys", "list", "--db", db)
    assert listed.returncode == 0
    assert [line.split("\t")[:2] for line in listed.stdout.splitlines()] == [
        [keys[0][:12] + "…", "alpha"], [keys[1][:12] + "…", "beta"]]
    assert keys[0] not in listed.stdout  # only prefixes are shown
    assert run_cli("keys", "list", "--project", "beta", "--db", db).stdout.count("\n") == 1
    r = run_cli("keys", "revoke", keys[0][:12] + "…", "--db", db)
    assert r.returncode == 0 and "revoked" in r.stderr
    database = Database(db)
    with database.session() as s:
        assert project_for_key(s, f"Bearer {keys[1]}") == "beta"
        try:
            project_for_key(s, f"Bearer {keys[0]}")
            raise AssertionError("a revoked key still works")
        except Unauthorized:
            pass
    again = run_cli("keys", "revoke", keys[0][:12], "--db", db)
    assert again.returncode == 2 and "no API key starts with" in again.stderr


def test_no_auth_is_refused_on_a_public_address(tmp_path):
    r = run_cli("serve", "--no-auth", "--host", "0.0.0.0", "--data-dir", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "--insecure-no-auth" in r.stderr


def test_health_looks_at_the_database(tmp_path):
    from tests.service.conftest import start_server

    srv = start_server("sqlite", tmp_path, workers=0, auth=False)
    try:
        base = srv.url.removesuffix("/v1")
        ok = httpx.get(base + "/health")
        assert ok.status_code == 200 and ok.json()["database"] == "ok"
        db_file = tmp_path / "slmtune.db"
        srv.app.state.db.engine.dispose()
        db_file.rename(tmp_path / "moved.db")
        (tmp_path / "slmtune.db").mkdir()  # the database path is now unusable
        down = httpx.get(base + "/health")
        assert down.status_code == 503 and down.json()["status"] == "unavailable"
        (tmp_path / "slmtune.db").rmdir()
        (tmp_path / "moved.db").rename(db_file)
        assert httpx.get(base + "/health").status_code == 200
    finally:
        srv.stop()


def test_keys_with_an_expiry_stop_working_after_it(tmp_path):
    from sqlalchemy import update

    from slmtune.service.auth import hash_key, project_for_key
    from slmtune.service.db import ApiKey, Database
    from slmtune.service.errors import Unauthorized

    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    key = run_cli("keys", "create", "--project", "temp", "--expires-in", "12h", "--db", db).stdout.strip()
    assert "\texpires 20" in run_cli("keys", "list", "--db", db).stdout
    bad = run_cli("keys", "create", "--project", "temp", "--expires-in", "soon", "--db", db)
    assert bad.returncode == 2 and "--expires-in" in bad.stderr and "30d" in bad.stderr
    database = Database(db)
    with database.session() as s:
        assert project_for_key(s, f"Bearer {key}") == "temp"
        s.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(expires_at=int(time.time()) - 1))
    with database.session() as s:
        try:
            project_for_key(s, f"Bearer {key}")
            raise AssertionError("an expired key still works")
        except Unauthorized as e:
            assert "expired on" in str(e)
    assert "\texpired 20" in run_cli("keys", "list", "--db", db).stdout
