"""What a client can make the server do before it knows who is asking, and how much one project can take from
another — each case as an attacker would try it, against a real server on loopback (docs/reliability.md).

The server runs in this process (uvicorn in a thread), so its memory is this process's: :class:`PeakRSS` samples
it while an attack runs and the tests bound the growth.
"""

from __future__ import annotations

import json
import os
import socket
import threading

import httpx
import pytest

from tests.helpers import FACTS, chat_record
from tests.service.conftest import sqlite_is_enough, start_server

MB = 1 << 20
BODY_TIMEOUT = 2.0  # the test servers' --body-timeout


class PeakRSS:
    """The most this process's resident memory grew while the block ran (sampled every 10 ms)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.grew = self.peak - self.base


def raw(port: int, head: str, body: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head.encode() + b"\r\n" + body)
    return s


def status_of(s: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture(scope="module")
def srv(backend, tmp_path_factory):
    s = start_server(backend, tmp_path_factory.mktemp("hard"), workers=0, body_timeout=BODY_TIMEOUT,
                     max_upload_bytes=4 * MB, max_examples=2000)
    yield s
    s.stop()


def post_head(port: int, path: str, length: int | None, key: str | None = None, extra: str = "") -> str:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return "\r\n".join(lines) + "\r\n" + extra


def test_slow_bodies_hold_no_slot_with_or_without_a_key(srv):
    """33 clients (one more than the API's 32 slots) announce 1000 bytes and send one: keyless ones get 401 before
    their body is read; keyed ones wait outside admission and get 408 once the body timeout passes. Meanwhile an
    ordinary request is answered (before, it hung with every slot held)."""
    key = srv.new_key("slow")
    port = srv.port
    keyless = [raw(port, post_head(port, "/v1/fine_tuning/jobs", 1000), b"{") for _ in range(33)]
    keyed = [raw(port, post_head(port, "/v1/fine_tuning/jobs", 1000, key), b"{") for _ in range(33)]
    assert {status_of(s) for s in keyless} == {401}
    r = httpx.get(srv.url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200  # answered while 33 slow bodies are in flight
    assert {status_of(s) for s in keyed} == {408}  # each let go once its body stalled past --body-timeout
    for s in keyless + keyed:
        s.close()


def test_a_chunked_upload_without_a_key_is_refused_before_it_is_stored(srv):
    """600 MB offered in 1 MB chunks with no Content-Length and no key: 401 at once and the connection closed;
    what the server took in before that is bounded by the sockets' buffers, and nothing was spooled to memory or
    disk (before: the whole upload was spooled, 596 MB, past the cap)."""
    port = srv.port
    head = (f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n")
    chunk = b"%x\r\n" % MB + b"a" * MB + b"\r\n"
    sent = 0
    with PeakRSS() as rss:
        s = raw(port, head)
        try:
            while sent < 600 * MB:
                s.sendall(chunk)
                sent += MB
        except OSError:  # the server closed the connection after its 401
            pass
        code = status_of(s)
        s.close()
    assert code == 401
    assert sent < 64 * MB, f"the server read {sent // MB} MB of a keyless upload"
    assert rss.grew < 64 * MB, f"the server grew by {rss.grew // MB} MB"


def test_an_upload_past_the_cap_without_content_length_is_cut_off_at_the_cap(srv):
    key = srv.new_key("chunked")
    port = srv.port
    before = set(os.listdir(srv.settings.files_dir / "chunked")) if (srv.settings.files_dir / "chunked").exists() \
        else set()
    head = (f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary=xyz\r\n")
    start = (b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--xyz\r\n'
             b'Content-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n')
    line = (json.dumps(chat_record(*FACTS[0])) + "\n").encode()
    sent = 0
    s = raw(port, head, b"%x\r\n" % len(start) + start + b"\r\n")
    try:
        while sent < 40 * MB:  # ten times the server's 4 MB cap
            body = line * (MB // len(line))
            s.sendall(b"%x\r\n" % len(body) + body + b"\r\n")
            sent += len(body)
    except OSError:
        pass
    code = status_of(s)
    s.close()
    assert code == 413  # (the body of the answer names file_too_large; the socket is closed by then)
    assert sent < 24 * MB  # it stopped reading near the cap
    after = set(os.listdir(srv.settings.files_dir / "chunked")) if (srv.settings.files_dir / "chunked").exists() \
        else set()
    assert after == before  # nothing stored


def send_json_body(port: int, size: int, key: str | None) -> tuple[int, int]:
    """POST a chat body of ``size`` bytes (declared in Content-Length) in 1 MB pieces made as they go (the client
    holds no copy); (status, bytes the server let in before answering)."""
    s = raw(port, post_head(port, "/v1/chat/completions", size, key))
    piece, sent = b"a" * MB, 0
    try:
        s.sendall(b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "')
        while sent < size:
            s.sendall(piece)
            sent += MB
    except OSError:  # the server answered and closed the connection
        pass
    code = status_of(s)
    s.close()
    return code, sent


def test_big_json_bodies_are_refused_before_they_are_read(srv):
    key = srv.new_key("bigjson")
    with PeakRSS() as rss:
        code, sent = send_json_body(srv.port, 300 * MB, None)
    assert code == 401 and sent < 64 * MB
    assert rss.grew < 64 * MB, f"the server grew by {rss.grew // MB} MB for a keyless body"  # before: ~900 MB
    with PeakRSS() as rss:
        code, sent = send_json_body(srv.port, 40 * MB, key)
    assert code == 413 and sent < 32 * MB  # cut off at the 8 MB body cap
    assert rss.grew < 64 * MB


@pytest.mark.parametrize("length, body, expect", [
    (None, b'{"model": "tiny-llama"}', {400}),  # no Content-Length, no chunking: an empty body
    (5, b'{"model": "tiny-llama", "training_file": "file-x"}', {400}),  # shorter than the body: cut JSON
    (4000, b'{"model": "tiny-llama"}', {408}),  # longer than the body: the rest never comes
])
def test_false_content_lengths_get_4xx_and_the_server_stays_up(srv, length, body, expect):
    key = srv.new_key("lengths")
    s = raw(srv.port, post_head(srv.port, "/v1/fine_tuning/jobs", length, key), body)
    assert status_of(s) in expect
    s.close()
    assert httpx.get(srv.url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200


def test_a_big_file_is_checked_and_planned_in_bounded_memory(srv, backend, tmp_path):
    """A 40 MB upload (10,000 long examples): the check keeps its preview and counts the rest, stopping one past the
    most examples a job may have (2,000 on this server); the plan counts without tokenizing. Before, the check read
    the whole file and every encoding into memory (+962 MB for 40 MB)."""
    sqlite_is_enough(backend, "the file and its check live on disk, the database holds one row")
    key = srv.new_key("bigfile")
    client = srv.client(key)
    rec = chat_record("color", "blue " * 780)  # ~4 KB a line
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for _ in range(10_000):
            f.write(json.dumps(rec) + "\n")
    assert path.stat().st_size > 40 * 10**6
    srv.settings.max_upload_bytes = 64 * MB  # this server's cap is 4 MB for the cut-off tests
    try:
        up = client.files.create(file=open(path, "rb"), purpose="fine-tune")
    finally:
        srv.settings.max_upload_bytes = 4 * MB
    headers = {"Authorization": f"Bearer {key}"}
    with PeakRSS() as rss:
        r = httpx.get(f"{srv.url}/slmtune/files/{up.id}/check", params={"model": "tiny-llama", "preview": 1,
                                                                          "max_seq_length": 8192},
                      headers=headers, timeout=300)
    assert r.status_code == 200, r.text
    check = r.json()
    assert check["stats"]["examples"] == 2001 and check["stats"]["complete"] is False
    assert any("checked the first 2001 examples" in w for w in check["warnings"])
    assert len(check["preview"]) == 1
    assert rss.grew < 160 * MB, f"the check grew the server by {rss.grew // MB} MB"
    with PeakRSS() as rss:
        plan = httpx.post(f"{srv.url}/slmtune/plan", json={"model": "tiny-llama", "training_file": up.id},
                          headers=headers, timeout=300)
    assert plan.status_code == 200, plan.text
    assert rss.grew < 160 * MB, f"the plan grew the server by {rss.grew // MB} MB"


def test_line_separators_cannot_smuggle_a_line_into_the_readers(srv, tmp_path):
    """U+2028 inside a string, then deep brackets (still inside the string): valid JSONL. The readers once split
    it at U+2028 and parsed the brackets as a line of their own (RecursionError → 500, a job claimed 6 times)."""
    key = srv.new_key("sep")
    client = srv.client(key)
    smuggled = dict(chat_record(*FACTS[1]), note="x\u2028" + "[" * 50_000)
    lines = [json.dumps(chat_record(*FACTS[i % 4]), ensure_ascii=False) for i in range(12)]
    lines.insert(3, json.dumps(smuggled, ensure_ascii=False))
    up = client.files.create(file=("sep.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    headers = {"Authorization": f"Bearer {key}"}
    check = httpx.get(f"{srv.url}/slmtune/files/{up.id}/check", params={"model": "tiny-llama"}, headers=headers,
                      timeout=120)
    assert check.status_code == 200 and check.json()["stats"]["examples"] == 13, check.text
    assert any("note" in w for w in check.json()["warnings"])  # an extra key, read past (not a second line)
    plan = httpx.post(f"{srv.url}/slmtune/plan", json={"model": "tiny-llama", "training_file": up.id},
                      headers=headers, timeout=120)
    assert plan.status_code == 200, plan.text


@pytest.mark.parametrize("body, param", [
    ({"hyperparameters": {"learning_rate_multiplier": "1e999"}}, "hyperparameters.learning_rate_multiplier"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 1e-9}}}},
     None),
])
def test_an_infinite_learning_rate_is_refused(srv, body, param):
    key = srv.new_key("lr")
    client = srv.client(key)
    up = client.files.create(file=("t.jsonl", "".join(json.dumps(chat_record(*FACTS[i % 4])) + "\n"
                                                      for i in range(12)).encode()), purpose="fine-tune")
    text = json.dumps({"model": "tiny-llama", "training_file": up.id, **body}).replace('"1e999"', "1e999")
    r = httpx.post(srv.url + "/fine_tuning/jobs", content=text, timeout=30,
                   headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    if param is None:  # a tiny multiplier is a valid value
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("body, needle", [
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["x" * 257]}, "stop"),
])
def test_odd_chat_fields_are_400s_not_500s(srv, body, needle):
    key = srv.new_key("odd")
    r = httpx.post(srv.url + "/chat/completions", json={"model": "tiny-llama", **body}, timeout=30,
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and needle in (r.json()["error"]["param"] or ""), r.text


@pytest.mark.parametrize("path", ["/fine_tuning/jobs/{job}/checkpoints?after=c%00x", "/fine_tuning/jobs/ftjob-%00",
                                  "/fine_tuning/jobs/{job}/events?after=%00", "/files/file-%00x", "/models/ft:%00"])
def test_a_nul_in_an_id_or_a_cursor_is_a_4xx_not_a_500(srv, path):
    """Found by the fuzzer on PostgreSQL, whose text columns refuse NUL: such an id can name nothing."""
    key = srv.new_key("nul")
    client = srv.client(key)
    body = "".join(json.dumps(chat_record(*FACTS[i % 4])) + "\n" for i in range(12)).encode()
    f = client.files.create(file=("t.jsonl", body), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id)  # no worker: it stays queued
    r = httpx.get(srv.url + path.format(job=job.id), headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code in (400, 404) and r.json()["error"]["message"], r.text


def test_api_docs_pages_are_off_by_default(srv):
    base = srv.url.removesuffix("/v1")
    assert httpx.get(base + "/docs").status_code == 404 and httpx.get(base + "/redoc").status_code == 404
    assert httpx.get(base + "/openapi.json").status_code == 200  # the schema itself stays


def test_without_keys_only_trusted_hosts_and_origins_get_in(tmp_path):
    """--no-auth on loopback: a DNS-rebinding name cannot read, a page on another origin cannot write; the
    console's own origin and `--allowed-hosts` names can."""
    srv = start_server("sqlite", tmp_path, workers=0, auth=False,
                       allowed_hosts=["localhost", "127.0.0.1", "::1", "tuner.lan"])
    try:
        url = srv.url + "/files"
        body = {"purpose": (None, "fine-tune"), "file": ("t.jsonl", json.dumps(chat_record(*FACTS[0])) + "\n")}
        rebinding = httpx.get(url, headers={"Host": "attacker.example"})
        assert rebinding.status_code == 403 and rebinding.json()["error"]["code"] == "untrusted_host"
        cross = httpx.post(url, files=body, headers={"Origin": "http://attacker.example"})
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "untrusted_origin"
        assert httpx.post(url, files=body, headers={"Origin": "null"}).status_code == 403
        own = httpx.post(url, files=body, headers={"Origin": f"http://127.0.0.1:{srv.port}"})
        assert own.status_code == 200, own.text
        assert httpx.get(url, headers={"Origin": "http://attacker.example"}).status_code == 200  # reads: Host decides
        widened = httpx.post(url, files=body, headers={"Host": "tuner.lan:8000", "Origin": "http://tuner.lan:8000"})
        assert widened.status_code == 200
        assert len(httpx.get(url).json()["data"]) == 2  # nothing the refused requests sent was stored
    finally:
        srv.stop()


def test_one_projects_flood_delays_anothers_chat_by_a_few_steps(tmp_path):
    """Project A fills every slot (4) and the queue with long generations; project B's 4-token chat is admitted at
    the next step (one of A's sequences is preempted) and finishes within a few engine steps while A's requests
    still run — before, B waited behind all of A's queue (hundreds of steps). A's queue share is capped: past it A
    gets 429 and B still gets in. The bound is in engine forwards, not seconds."""
    srv = start_server("sqlite", tmp_path, workers=0, max_running=4, max_queued=32, max_queued_per_project=8)
    try:
        a, b = srv.client(srv.new_key("flood")), srv.client(srv.new_key("quiet"))
        msgs = [{"role": "user", "content": "Tell me a long story."}]
        a.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=2)  # the model is loaded
        engine = srv.app.state.inference.engine("tiny-llama")
        streams = [a.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=400, n=2, stream=True,
                                             temperature=1.0, seed=i) for i in range(6)]
        first = [next(iter(s)) for s in streams]  # each stream is open (12 sequences: 4 running, 8 queued)
        assert all(c.choices[0].delta.role == "assistant" for c in first)
        import openai

        with pytest.raises(openai.RateLimitError):  # A's queue share (8) is taken
            a.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=4)
        steps_before, preempted_before = engine.steps, engine.preempted
        full = len(engine.rows) == engine.max_running  # (A's sequences may end early at a sampled end token)
        reply = b.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=4, temperature=1.0, seed=1)
        steps_taken = engine.steps - steps_before
        assert reply.choices[0].finish_reason in ("length", "stop")
        assert steps_taken <= 12, steps_taken  # a few forwards, not A's 400-token generations
        assert engine.preempted > preempted_before or not full  # every slot was A's: one of them made room
        still = sum(1 for q in [*engine.rows, *engine.waiting] if q.project == "flood")
        assert still >= 8  # most of A's 12 sequences were still generating when B's answer came
        for s in streams:  # and A's requests, preempted ones included, run to their end
            ends = [c.choices[0].finish_reason for c in s if c.choices and c.choices[0].finish_reason]
            assert len(ends) == 2 and set(ends) <= {"length", "stop"}
    finally:
        srv.stop()


def test_prompts_far_past_the_context_are_refused_before_templating(srv):
    """Text that no tokenizer could fit in the context (each token stands for at most a known number of bytes) is
    refused from its size alone, before the chat template is rendered."""
    key = srv.new_key("long")
    server = srv.app.state.inference
    engine = server.engine("tiny-llama")
    from slmtune.inference.serving import longest_token_bytes

    prepared = server.prepare_sync("tiny-llama")
    size = (engine.max_length + 1) * longest_token_bytes(prepared.tokenizer) + 10
    r = httpx.post(srv.url + "/chat/completions", timeout=60, headers={"Authorization": f"Bearer {key}"},
                   json={"model": "tiny-llama", "messages": [{"role": "user", "content": "a" * size}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert "at least" in r.json()["error"]["message"]
