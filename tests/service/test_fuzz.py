"""Schemathesis against the served OpenAPI document: seeded, over every route, on SQLite and PostgreSQL.

The real server on loopback, auth on, with a real file and a real job whose ids are handed to the fuzzer (so
the routes that take an id are fuzzed past their 404). Checks: no 5xx, every response matches its documented
status codes, content types and schemas, schema-invalid requests are refused, requests without a key are refused,
405s name the allowed methods. Not checked: ``positive_data_acceptance`` (a schema-valid request must succeed),
which cannot hold for references the schema cannot enumerate (an unknown ``model`` or ``training_file`` is a
well-formed 400/404, as on OpenAI).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import FACTS, chat_record, write_jsonl
from tests.service.conftest import start_server

MIN_CASES = 1000
# Examples per operation beyond schemathesis's coverage phase (which does not shrink with them): SQLite 30,
# PostgreSQL, where only the storage under the same handlers differs, a third of that. Deeper runs (60 and 20 until
# 2026-12-07) found nothing the shallower ones missed and cost a minute and a half of the suite.
EXAMPLES = {"sqlite": 30, "postgres": 10}


def _config(tmp: Path, ids: dict[str, str], other_file: str) -> Path:
    lines = ["[parameters]"] + [f'{name} = "{value}"' for name, value in ids.items()]
    # DELETE gets a file of its own, so the shared one stays for the routes tested after it
    lines += ["", "[[operations]]", 'include-name = "DELETE /v1/files/{file_id}"',
              f'parameters = {{ file_id = "{other_file}" }}']
    path = tmp / "schemathesis.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fuzzed_requests_get_no_5xx_and_every_response_matches_the_schema(backend, tmp_path):
    srv = start_server(backend, tmp_path, workers=0, auth=True, rate_limit_rpm=0)  # 0: the fuzzer is not throttled
    try:
        key = srv.new_key("fuzz")
        client = srv.client(key)
        data = write_jsonl(tmp_path / "t.jsonl", [chat_record(*FACTS[i % 4]) for i in range(12)])
        f = client.files.create(file=open(data, "rb"), purpose="fine-tune")
        spare = client.files.create(file=open(data, "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id)  # no worker: it stays put
        config = _config(tmp_path, {"file_id": f.id, "job_id": job.id}, spare.id)
        exe = Path(sys.executable).parent / "schemathesis"
        r = subprocess.run(
            [str(exe), "--config-file", str(config), "--no-color", "run", srv.url.removesuffix("/v1") + "/openapi.json",
             "-H", f"Authorization: Bearer {key}", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--max-examples", str(EXAMPLES[backend]), "--seed", "20261203", "--workers", "1",
             "--request-timeout", "30",
             "--phases", "examples,coverage,fuzzing,stateful", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
        tested = re.search(r"Tested: (\d+)", out)
        assert tested and int(tested.group(1)) == len([p for p in srv.app.openapi()["paths"].values()
                                                       for _ in p]), out[-3000:]
        generated = re.search(r"(\d+) generated", out)
        assert generated and int(generated.group(1)) >= MIN_CASES, out[-3000:]
        # the server is still whole: the seeded objects answer as before
        assert client.files.retrieve(f.id).id == f.id
        assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    finally:
        srv.stop()
