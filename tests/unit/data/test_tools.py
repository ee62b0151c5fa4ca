"""Tool-calling data: every problem named by file, line and field; the same tokens at training and serving time for
the same conversation (fallback and a tool-aware template); replies read back into calls, streamed or whole."""

import copy
import json

import pytest

from slmtune.data.formats import jsonl_records, parse_records
from slmtune.data.tokenize import IGNORE_INDEX, encode_chat
from slmtune.data.tools import CALL_OPEN, ReplyReader, native_tools, parse_reply
from slmtune.inference.serving import ModelServer
from slmtune.models.loading import load_tokenizer
from slmtune.models.registry import resolve

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object", "required": ["city"], "properties": {
                                                "city": {"type": "string"}, "days": {"type": "integer"}}}}}


def call(name: str, args: str, cid: str = "c1") -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [call("get_weather", '{"city": "Paris"}'),
                                                          call("get_weather", '{"city":"Rome","days":2}', "c2")]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    {"role": "assistant", "content": "Sunny in Paris, rain in Rome."},
]


def read(*records):
    return parse_records(jsonl_records(enumerate([json.dumps(r) for r in records], 1)), "F")


def test_every_tool_problem_is_named_and_good_records_are_kept():
    def convo(*turns):
        return {"tools": [WEATHER], "messages": [{"role": "user", "content": "x"}, *turns]}

    r = read(
        {"tools": [WEATHER], "messages": CONVERSATION},
        convo({"role": "assistant", "tool_calls": [call("get_weather", "{bad")]}),
        convo({"role": "assistant", "tool_calls": [call("nope", "{}")]}),
        convo({"role": "tool", "tool_call_id": "zz", "content": "r"}, {"role": "assistant", "content": "ok"}),
        convo({"role": "assistant", "tool_calls": [call("get_weather", '{"city": "a"}')]},
              {"role": "user", "content": "again"}, {"role": "assistant", "content": "ok"}),
        convo({"role": "assistant", "tool_calls": [call("get_weather", '{"days": "x"}')]},
              {"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "assistant", "content": "ok"}),
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
         "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call("f", "{}")]}]},
        # the deprecated form, converted
        {"functions": [WEATHER["function"]], "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": None,
             "function_call": {"name": "get_weather", "arguments": '{"city": "R"}'}},
            {"role": "function", "name": "get_weather", "content": "sunny"}, {"role": "assistant", "content": "ok"}]},
        # LLaMA-Factory's ShareGPT function turns, tools as JSON text
        {"conversations": [{"from": "human", "value": "Oslo?"},
                           {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
                           {"from": "observation", "value": "cold"}, {"from": "gpt", "value": "Cold."}],
         "tools": json.dumps([WEATHER["function"]])},
    )
    problems = [str(p) for p in r.problems]
    assert problems == [
        "F:2: messages[1].tool_calls[0].function.arguments: not valid JSON: Expecting property name enclosed in double "
        "quotes (column 2)",
        "F:3: messages[1].tool_calls[0].function.name: 'nope' is not one of the record's tools (get_weather)",
        "F:4: messages[1].tool_call_id: 'zz' answers no earlier call of this turn",
        "F:5: messages[1].tool_calls: call 'c1' is never answered (no tool message with its tool_call_id before the "
        "next user turn)",
        "F:7: tools[0].function.parameters: not a valid JSON Schema: 'nonsense' is not valid under any of the given "
        "schemas",
        "F:8: messages[1].tool_calls[0].function.name: a call to 'f', but the record has no 'tools'",
    ]
    assert [str(w) for w in r.warnings] == [
        "F:6: messages[1].tool_calls[0].function.arguments: do not match get_weather's parameters: (arguments): "
        "'city' is a required property; days: 'x' is not of type 'integer'"]
    assert [e.line for e in r.examples] == [1, 6, 9, 10]
    deprecated, sharegpt = r.examples[2], r.examples[3]
    assert deprecated.messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert deprecated.messages[2] == {"role": "tool", "content": "sunny", "weight": 1, "tool_call_id": "call_1"}
    assert sharegpt.tools[0]["function"]["name"] == "get_weather"
    assert sharegpt.messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
    # data.strict: arguments off their schema are problems, not warnings
    strict = parse_records(jsonl_records(enumerate([json.dumps(convo(
        {"role": "assistant", "tool_calls": [call("get_weather", '{"days": 1}')]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "assistant", "content": "ok"}))], 1)),
        "F", strict=True)
    assert "(data.strict is on)" in str(strict.problems[0]) and not strict.examples


NATIVE_TEMPLATE = (  # a tool-aware template in the <tool_call> syntax (as Qwen2.5's and Hermes' are), written here
    "{%- if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "Tools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}<|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'system' %}{%- elif m.role == 'tool' %}"
    "{{ '\n<|im_start|>tool\n' + m.content + '<|im_end|>' }}"
    "{%- else %}{{ '\n<|im_start|>' + m.role + '\n' }}{% if m.content %}{{ m.content }}{% endif %}"
    "{%- for c in m.tool_calls or [] %}\n<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments}"
    " | tojson }}\n</tool_call>{%- endfor %}<|im_end|>{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '\n<|im_start|>assistant\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def tokenizers():
    fallback = load_tokenizer(resolve("tiny-llama"))
    native = copy.deepcopy(fallback)
    native.chat_template = NATIVE_TEMPLATE
    return {"fallback": fallback, "native": native}


@pytest.mark.parametrize("kind", ["fallback", "native"])
def test_training_and_serving_render_the_same_tokens(tokenizers, kind):
    tok = tokenizers[kind]
    assert native_tools(tok) == (kind == "native")
    ex = read({"tools": [WEATHER], "messages": CONVERSATION}).examples[0]
    ids, labels = encode_chat(tok, ex.messages, ex.tools)
    for i, m in enumerate(ex.messages):
        if m["role"] != "assistant":
            continue
        prompt = ModelServer.prompt_ids(tok, ex.messages[:i], tools=ex.tools)
        assert ids[:len(prompt)] == prompt, f"turn {i}: the served prompt is not what training saw before it"
        assert labels[len(prompt)] != IGNORE_INDEX  # the turn's first token is trained; the prompt's are not
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert '"name": "get_weather"' in trained and "Sunny in Paris" in trained
    assert "sunny" not in trained.replace("Sunny", "")  # tool results are context, never trained
    if kind == "fallback":  # the calls spelled canonically, whatever spacing the data had
        assert '{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}' in tok.decode(ids)


def test_replies_are_read_the_same_streamed_or_whole():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "n": 1e2}}\n'
            '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}')
    content, calls = parse_reply(text)
    assert content == "Let me check."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", '{"city": "Paris", "n": 1e2}'),  # the model's own text: numbers as written
        ("get_weather", '{"city": "Rome"}')]  # an unclosed last block that holds a whole call counts
    reader, sent, got = ReplyReader(), "", []
    for k in range(0, len(text), 3):  # three characters at a time: the open tag arrives split
        piece, done = reader.feed(text[k:k + 3])
        assert CALL_OPEN[:2] not in piece  # a tag in the making is held back, never sent as content
        sent, got = sent + piece, got + done
    piece, done = reader.finish()
    assert (sent + piece).strip() == content and [c["function"] for c in got + done] == [c["function"] for c in calls]
    assert parse_reply("no calls <tool_ here") == ("no calls <tool_ here", [])
    assert parse_reply(f"{CALL_OPEN}\nnot json\n</tool_call>")[1] == []  # not a call: left as text
