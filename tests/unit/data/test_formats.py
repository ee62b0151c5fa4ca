import json

from slmtune.data.formats import parse_lines
from slmtune.data.sources import read_jsonl
from tests.helpers import chat_record, write_jsonl


def problems_of(rows, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    examples, problems = read_jsonl(path)
    return examples, [str(p).replace(str(path), "F") for p in problems]


def test_valid_chat_and_completion_files(tmp_path):
    ex, probs = problems_of([chat_record("color", "blue"), chat_record("city", "Paris", system=False)], tmp_path)
    assert probs == [] and len(ex) == 2 and ex[0].kind == "chat"
    ex, probs = problems_of([{"prompt": "2+2=", "completion": " 4"}], tmp_path)
    assert probs == [] and ex[0].kind == "completion" and ex[0].completion == " 4"


def test_every_problem_is_reported_with_file_line_and_field(tmp_path):
    rows = [
        chat_record("color", "blue"),                                                       # 1 ok
        '{"messages": [',                                                                    # 2 bad JSON
        {"messages": [{"role": "user", "content": "hi"}]},                                   # 3 no assistant
        {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},  # 4 role
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]},  # 5 empty
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y", "weight": 2}]},  # 6
        {"messages": "hello"},                                                                # 7 type
        [1, 2],                                                                               # 8 not an object
        {"text": "raw"},                                                                      # 9 unknown format
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]},  # 10
        {"messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "b"}]},  # 11
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "b", "extra": 1}]},  # 12
    ]
    ex, probs = problems_of(rows, tmp_path)
    assert [e.line for e in ex] == [1]
    assert probs == [
        "F:2: (json): invalid JSON: Expecting value (column 15)",
        "F:3: messages: missing assistant turn: at least one assistant message is needed",
        "F:4: messages[0].role: unknown role 'bot'; expected one of system, user, assistant, tool",
        "F:5: messages[0].content: empty",
        "F:6: messages[0].content: expected a string, got int",
        "F:6: messages[1].weight: must be 0 or 1, got 2",
        "F:7: messages: expected a list of messages, got str",
        "F:8: (root): expected a JSON object, got list",
        "F:9: (root): expected 'messages' (chat format), 'prompt' and 'completion', 'input' with "
        "'preferred_output' and 'non_preferred_output' (preference format), 'prompt', 'completion' and 'label' "
        "(unpaired format), 'instruction' and 'output' (Alpaca) or 'conversations' (ShareGPT); it has text (map "
        "them with data.columns)",
        "F:10: messages: every assistant message has weight 0: nothing to train on",
        "F:11: messages[0].weight: only assistant messages can have a weight",
        "F:12: messages[0].content: missing",
        "F:12: messages[1].extra: unknown key",
    ]


def test_blank_lines_are_skipped_but_line_numbers_stay_true(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + json.dumps(chat_record("a", "b")) + "\n\n{oops}\n")
    _, probs = read_jsonl(path)
    assert [p.line for p in probs] == [4]


def test_mixed_formats_and_empty_file(tmp_path):
    _, probs = problems_of([chat_record("a", "b"), {"prompt": "p", "completion": "c"}], tmp_path)
    assert probs == ["F:2: (root): completion format, but line 1 is chat format; use one format a file"]
    _, probs = parse_lines([], "empty.jsonl")
    assert [str(p) for p in probs] == ["empty.jsonl:1: (file): no examples (the file is empty)"]


def test_missing_file_and_bad_encoding(tmp_path):
    _, probs = read_jsonl(tmp_path / "missing.jsonl")
    assert probs[0].message == "no such file"
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps(chat_record("a", "b")).encode() + b"\n\xff\xfe\n")
    _, probs = read_jsonl(bad)
    assert (probs[0].line, probs[0].message) == (2, "not valid UTF-8 text")


def test_content_parts_are_accepted_as_text(tmp_path):
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
    row = {"messages": [{"role": "user", "content": parts},
                        {"role": "assistant", "content": "Hello"}]}
    ex, probs = problems_of([row], tmp_path)
    assert probs == [] and ex[0].messages[0]["content"] == "Hi there"
