"""Chat completions on the batching engine, through a real server and the real `openai` SDK: n, logprobs, stop,
usage in streams, field checks, 429 with Retry-After, disconnects that free the slot, the rest of the API answering
while chats are in flight, and /metrics."""

from __future__ import annotations

import json
import re
import threading

import httpx
import openai
import pytest

from tests.service.conftest import start_server, wait_for

MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = start_server("sqlite", tmp_path_factory.mktemp("chat"), workers=0, auth=False, max_running=16,
                     max_queued=16, serve_precision="fp32")
    yield s
    s.stop()


def metric(srv, name: str) -> float:
    text = httpx.get(srv.url.removesuffix("/v1") + "/metrics").text
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return sum(values)


def test_n_choices_logprobs_and_usage(srv):
    client = srv.client()
    r = client.chat.completions.create(model="tiny-llama", messages=MSGS, max_tokens=6, n=3, logprobs=True,
                                       top_logprobs=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        assert c.logprobs is not None and 1 <= len(c.logprobs.content) <= 6
        first = c.logprobs.content[0]
        assert first.logprob <= 0 and len(first.top_logprobs) == 3
        assert first.top_logprobs[0].logprob >= first.logprob - 1e-6
    assert r.usage.completion_tokens == 18 or r.choices[0].finish_reason == "stop"
    plain = client.chat.completions.create(model="tiny-llama", messages=MSGS, max_tokens=6)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == r.choices[0].message.content  # greedy: every choice the same

    chunks = list(client.chat.completions.create(model="tiny-llama", messages=MSGS, max_tokens=6, n=2, stream=True,
                                                 stream_options={"include_usage": True}))
    by_choice = {0: "", 1: ""}
    for ch in chunks:
        for c in ch.choices:
            by_choice[c.index] += c.delta.content or ""
    assert by_choice[0] == by_choice[1] and by_choice[0].strip() == plain.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2 * plain.usage.completion_tokens
    finishes = [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason]
    assert len(finishes) == 2


def test_stop_strings_end_the_answer(srv):
    client = srv.client()
    full = client.chat.completions.create(model="tiny-llama", messages=MSGS, max_tokens=12).choices[0]
    stop = full.message.content[3:6]
    cut = client.chat.completions.create(model="tiny-llama", messages=MSGS, max_tokens=12, stop=[stop]).choices[0]
    assert stop not in cut.message.content and cut.finish_reason == "stop"
    assert full.message.content.startswith(cut.message.content)


@pytest.mark.parametrize("kw, param", [
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"top_logprobs": 2}, None),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 9}, "n"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
])
def test_bad_fields_get_a_400_naming_them(srv, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        srv.client().chat.completions.create(model="tiny-llama", messages=MSGS, **kw)
    assert e.value.status_code == 400
    if param:
        assert e.value.body["param"] == param


def test_past_the_queue_a_429_with_retry_after(tmp_path):
    s = start_server("sqlite", tmp_path, workers=0, auth=False, max_running=1, max_queued=0,
                     serve_precision="fp32")
    try:
        body = {"model": "tiny-llama", "messages": MSGS, "max_tokens": 1500, "stream": True}
        with httpx.stream("POST", s.url + "/chat/completions", json=body, timeout=60) as first:
            lines = first.iter_lines()
            while '"content": ""' in next(lines) or not metric(s, "slmtune_running_sequences"):
                pass  # until the first request holds the only slot and decodes
            r = httpx.post(s.url + "/chat/completions", json={**body, "stream": False}, timeout=60)
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_exceeded"
        # the stream was closed: its slot frees, and the next request is served
        wait_for(lambda: metric(s, "slmtune_running_sequences") == 0, timeout=30, interval=0.05)
        ok = s.client().chat.completions.create(model="tiny-llama", messages=MSGS, max_tokens=3)
        assert ok.choices[0].message is not None
    finally:
        s.stop()


def test_a_client_that_disconnects_stops_its_generation(srv):
    client = srv.client()
    full = client.chat.completions.create(model="tiny-llama", messages=MSGS, max_tokens=300)
    assert full.choices[0].finish_reason == "length"  # this prompt runs to max_tokens when nobody leaves
    body = {"model": "tiny-llama", "messages": MSGS, "max_tokens": 300}

    before = metric(srv, "slmtune_generated_tokens_total")
    with httpx.stream("POST", srv.url + "/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    wait_for(lambda: metric(srv, "slmtune_running_sequences") == 0, timeout=30, interval=0.02)
    assert metric(srv, "slmtune_generated_tokens_total") - before < 300

    before = metric(srv, "slmtune_generated_tokens_total")
    with pytest.raises(httpx.ReadTimeout):  # not streaming: the client gives up waiting
        httpx.post(srv.url + "/chat/completions", json={**body, "max_tokens": 1500}, timeout=0.3)
    wait_for(lambda: metric(srv, "slmtune_running_sequences") == 0, timeout=30, interval=0.02)
    assert metric(srv, "slmtune_generated_tokens_total") - before < 1500


def test_the_rest_of_the_api_answers_while_16_chats_are_in_flight(srv):
    client = srv.client(timeout=120)
    done: list[str] = []
    lock = threading.Lock()

    def chat(i):
        for _ in client.chat.completions.create(model="tiny-llama", max_tokens=400, stream=True,
                                                messages=[{"role": "user", "content": f"hello {i}"}]):
            pass
        with lock:
            done.append(f"chat{i}")

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: metric(srv, "slmtune_running_sequences") >= 8, timeout=60, interval=0.02)
    client.files.list()
    with lock:
        done.append("files")
    client.fine_tuning.jobs.list()
    with lock:
        done.append("jobs")
    assert "tiny-llama" in [m.id for m in client.models.list().data]
    with lock:
        done.append("models")
    for t in threads:
        t.join(120)
    assert len(done) == 19
    assert done.index("models") < 16, f"the API waited for the chats: {done}"


def test_metrics_in_prometheus_text(srv):
    srv.client().chat.completions.create(model="tiny-llama", messages=MSGS, max_tokens=4)
    text = httpx.get(srv.url.removesuffix("/v1") + "/metrics").text
    for name in ("slmtune_running_sequences", "slmtune_queued_sequences", "slmtune_generated_tokens_total",
                 "slmtune_time_to_first_token_seconds_bucket", "slmtune_inter_token_latency_seconds_count",
                 "slmtune_adapter_cache_hits_total", "slmtune_adapter_loads_total"):
        assert name in text or name.replace("_total", "") in text, name
    assert metric(srv, "slmtune_time_to_first_token_seconds_count") >= 1


# --- tools and response_format: the tiny model is random, so every valid call below is the grammar's doing ---------
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "weather in Paris for two days?"}]


def _valid(call) -> bool:
    import jsonschema

    schema = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    return True


def test_required_and_named_tool_choice_always_give_calls_that_validate(srv):
    client = srv.client()
    r = client.chat.completions.create(model="tiny-llama", messages=ASK, tools=[WEATHER, ADD], tool_choice="required",
                                       parallel_tool_calls=False, n=4, temperature=1.0, seed=3, max_tokens=256)
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
        call = c.message.tool_calls[0]
        assert call.id.startswith("call_") and call.type == "function" and _valid(call)
    named = client.chat.completions.create(model="tiny-llama", messages=ASK, tools=[WEATHER, ADD], max_tokens=256,
                                           tool_choice={"type": "function", "function": {"name": "add"}},
                                           parallel_tool_calls=False, n=2, temperature=1.0, seed=4)
    assert all(c.message.tool_calls[0].function.name == "add" and _valid(c.message.tool_calls[0])
               for c in named.choices)
    # a function that declares no "parameters" takes none (found by the fuzzer: this was a 500)
    bare = client.chat.completions.create(model="tiny-llama", messages=ASK, tools=[{"type": "function", "function": {
        "name": "ping"}}], tool_choice="required", parallel_tool_calls=False, max_tokens=64)
    call = bare.choices[0].message.tool_calls[0]
    assert call.function.name == "ping" and json.loads(call.function.arguments) == {}
    free = client.chat.completions.create(model="tiny-llama", messages=ASK, max_tokens=8)  # no tools: no calls
    assert free.choices[0].message.tool_calls is None

    # streamed: the call arrives as tool-call deltas the SDK's stream helper reassembles
    with client.chat.completions.stream(model="tiny-llama", messages=ASK, tools=[WEATHER], tool_choice="required",
                                        parallel_tool_calls=False, max_tokens=256) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather" and _valid(call)
    assert call.function.parsed_arguments["days"] in range(1, 8)  # strict tool: the SDK parses the arguments


def test_response_format_json_schema_through_parse_and_json_object(srv):
    from pydantic import BaseModel, Field

    class Answer(BaseModel):
        city: str = Field(max_length=10)
        score: int = Field(ge=0, le=9)

    client = srv.client()
    r = client.chat.completions.parse(model="tiny-llama", messages=ASK, response_format=Answer, max_tokens=256,
                                      temperature=1.0, seed=5)
    assert isinstance(r.choices[0].message.parsed, Answer)
    obj = client.chat.completions.create(model="tiny-llama", messages=ASK, max_tokens=48,
                                         response_format={"type": "json_object"}, temperature=0.7, seed=6)
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_tool_history_tool_choice_none_and_bad_tool_requests(srv):
    client = srv.client()
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "days": 2}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = client.chat.completions.create(model="tiny-llama", messages=history, tools=[WEATHER], tool_choice="none",
                                       max_tokens=16)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    bad = [({"tool_choice": "required"}, "tool_choice"),
           ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
           ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
            "tools[0].function.parameters"),
           ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
               "type": "object", "properties": {"d": {"type": "string", "format": "no-such-format"}}}}}],
             "tool_choice": "required"}, "tools")]
    for extra, param in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny-llama", messages=ASK, max_tokens=4, **extra)
        assert e.value.body["param"] == param, e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=ASK, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
                "type": "object", "properties": {"d": {"type": "string", "format": "no-such-format"}}}}})
    assert e.value.body["param"] == "response_format" and "no-such-format" in e.value.body["message"]
