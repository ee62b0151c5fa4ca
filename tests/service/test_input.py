"""Hostile and odd input through the real server: every malformed upload is a 400 naming the line (never a 5xx),
JSON strings with U+2028/U+0085 are fine, uploads past the limit get 413 before being stored, a created file is
visible to the very next request, and chat/job fields have bounds."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.service.conftest import start_server

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


def upload(client, body: bytes, name: str = "t.jsonl"):
    return client.files.create(file=(name, body), purpose="fine-tune")


@pytest.mark.parametrize("line, problem", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"n": ' + "9" * 5000 + "}", "digits"),
    ('{"a": 1', "Expecting"),
    ("[1, 2]", "is a list"),
])
def test_a_malformed_line_is_a_400_naming_it(api_server, line, problem):
    client = api_server.client(api_server.new_key("input"))
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, (GOOD + "\n" + line + "\n").encode())
    msg = e.value.body["message"]
    assert ("t.jsonl line 2:" in msg or "t.jsonl line 2 is" in msg) and problem in msg, msg
    assert e.value.body["code"] == "invalid_file_format"
    assert client.files.list() is not None  # the connection and the server are fine afterwards


def test_line_separators_inside_strings_are_not_line_ends(api_server):
    client = api_server.client(api_server.new_key("input"))
    odd = json.dumps({"messages": [{"role": "user", "content": "a\u2028b\u0085c"},
                                   {"role": "assistant", "content": "ok"}]}, ensure_ascii=False)
    body = (GOOD + "\r\n" + odd + "\n").encode()
    f = upload(client, body)
    assert f.bytes == len(body)
    assert client.files.content(f.id).content == body  # streamed back byte for byte


def test_a_created_file_is_visible_to_the_next_request(api_server):
    client = api_server.client(api_server.new_key("raw"))
    for _ in range(10):
        f = upload(client, GOOD.encode())
        assert client.files.retrieve(f.id).id == f.id


def test_uploads_past_the_limit_get_413_and_store_nothing(tmp_path):
    srv = start_server("sqlite", tmp_path, workers=0, auth=False, max_upload_bytes=2 * 1024 * 1024)
    try:
        url = srv.url + "/files"
        line = (GOOD + "\n").encode()
        for size in (5 * 1024 * 1024, int(2.5 * 1024 * 1024)):  # refused from Content-Length / while copying
            body = line * (size // len(line))
            r = httpx.post(url, files={"file": ("big.jsonl", body)}, data={"purpose": "fine-tune"}, timeout=60)
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "file_too_large"
        assert not list((tmp_path / "data" / "files").rglob("*")) or all(
            p.is_dir() for p in (tmp_path / "data" / "files").rglob("*"))
        ok = httpx.post(url, files={"file": ("ok.jsonl", line * 10)}, data={"purpose": "fine-tune"}, timeout=60)
        assert ok.status_code == 200
    finally:
        srv.stop()


def test_job_and_chat_fields_are_bounded(api_server):
    client = api_server.client(api_server.new_key("bounds"))
    f = upload(client, (GOOD + "\n").encode() * 10)
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, suffix="my.model")
    assert e.value.body["param"] == "suffix"
    msgs = [{"role": "user", "content": "hi"}] * 3000
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=2)
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x" * 1_000_001}])
    assert "characters" in e.value.body["message"]


def test_a_key_past_its_rate_limit_gets_429_with_retry_after_and_other_keys_do_not(tmp_path):
    srv = start_server("sqlite", tmp_path, workers=0, auth=True, rate_limit_rpm=30)  # a burst of 30, then 1 / 2 s
    try:
        busy, quiet = srv.new_key("busy"), srv.new_key("quiet")
        client, start = srv.client(busy), time.monotonic()
        for _ in range(30):
            assert client.models.list().data
        extra = 0  # on a slow machine the burst takes seconds: what refilled meanwhile may pass, nothing more
        while True:
            try:
                client.models.list()
            except openai.RateLimitError as refused:
                e = refused
                break
            extra += 1
            assert extra <= (time.monotonic() - start) / 2 + 1
        assert e.body["code"] == "rate_limit_exceeded" and "30 requests per minute" in e.body["message"]
        assert 1 <= int(e.response.headers["retry-after"]) <= 2  # one request refills in 2 s
        assert srv.client(quiet).models.list().data  # buckets are per key
        bad = httpx.get(srv.url + "/models", headers={"Authorization": "Bearer sk-slm-unknown"})
        assert bad.status_code == 401  # an unknown key is refused as such, never counted
        # the SDK's own retry honours Retry-After: the same call succeeds once the bucket refills
        assert srv.client(busy, max_retries=2).models.list().data
    finally:
        srv.stop()


def test_uploads_past_the_projects_storage_quota_get_413_and_deleting_frees_it(tmp_path):
    srv = start_server("sqlite", tmp_path, workers=0, auth=True, max_storage_bytes=3000)
    try:
        client, other = srv.client(srv.new_key("small")), srv.client(srv.new_key("other"))
        body = (GOOD + "\n").encode() * (1000 // (len(GOOD) + 1))
        kept = [upload(client, body) for _ in range(3000 // len(body))]
        with pytest.raises(openai.APIStatusError) as e:
            upload(client, body)
        assert e.value.status_code == 413 and e.value.body["code"] == "storage_quota_exceeded"
        assert "quota is 3000 bytes" in e.value.body["message"]
        assert len(client.files.list().data) == len(kept)  # nothing stored for the refused upload
        assert upload(other, body).bytes == len(body)  # the quota is per project
        client.files.delete(kept[0].id)
        assert upload(client, body).bytes == len(body)
    finally:
        srv.stop()
