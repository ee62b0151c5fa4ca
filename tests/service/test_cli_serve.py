"""`slmtune keys create` and `slmtune serve` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import run_cli
from tests.service.conftest import free_port


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
