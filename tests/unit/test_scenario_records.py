"""Each scenario's record format: valid records parse, bad ones are named by file, line and field."""

import json

import pytest

from slmtune.data.formats import DataError
from slmtune.scenarios.records import load_records, read_records


def write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


@pytest.mark.parametrize("scenario,good,bad,where", [
    ("classification", {"text": "great", "label": "pos"}, {"text": "x", "label": 3}, "label: expected a string"),
    ("translation", {"src": "Hallo", "tgt": "Hello", "src_lang": "de", "tgt_lang": "en"},
     {"src": "Hallo", "tgt": "Hello", "src_lang": "de"}, "tgt_lang: missing"),
    ("qa", {"context": "c", "question": "q?", "answer": "a"}, {"context": "c", "question": "q?", "answer": " "},
     "answer: empty"),
    ("domain", {"text": "some text"}, {"text": ["t"]}, "text: expected a string"),
    ("creative", {"prompt": "Write", "text": "a poem"}, {"prompt": 5, "text": "p"}, "prompt: expected a string"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     {"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ("ner", {"tokens": ["Anna", "ran"], "tags": ["B-PER", "O"]}, {"tokens": ["Anna"], "tags": ["B-PER", "O"]},
     "tags: 2 tags for 1 tokens"),
    ("ner", {"text": "Anna ran", "entities": [{"start": 0, "end": 4, "label": "PER"}]},
     {"text": "Anna", "entities": [{"start": 0, "end": 9, "label": "PER"}]}, "entities[0]: span 0..9"),
])
def test_record_validation_names_file_line_and_field(tmp_path, scenario, good, bad, where):
    p = write(tmp_path, "d.jsonl", [good, "", bad, "{not json"])
    records, problems = read_records(p, scenario)
    assert [r.line for r in records] == [1]
    assert str(problems[0]).startswith(f"{p}:3: ") and where in str(problems[0])
    assert str(problems[1]).startswith(f"{p}:4: (json): invalid JSON")
    with pytest.raises(DataError):
        load_records(p, scenario)


def test_ner_record_forms_agree(tmp_path):
    bio = write(tmp_path, "a.jsonl", [{"tokens": ["Anna", "Berg", "left", "Paris"],
                                       "tags": ["B-PER", "I-PER", "O", "B-LOC"]}])
    spans = write(tmp_path, "b.jsonl", [{"text": "Anna Berg left Paris", "entities": [
        {"start": 0, "end": 9, "label": "PER"}, {"start": 15, "end": 20, "label": "LOC"}]}])
    conll = tmp_path / "c.conll"
    conll.write_text("-DOCSTART- O\n\nAnna B-PER\nBerg I-PER\nleft O\nParis B-LOC\n\n")
    want = [("PER", "Anna Berg"), ("LOC", "Paris")]
    for p in (bio, spans, conll):
        assert load_records(p, "ner")[0].data["entities"] == want
    bad = tmp_path / "bad.conll"
    bad.write_text("Anna B-PER\nBerg X-PER\n")
    _, problems = read_records(bad, "ner")
    assert str(problems[0]).startswith(f"{bad}:2: ")


def test_text_files_for_domain(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("First paragraph\ncontinues here.\n\n\nSecond one.\n")
    recs = load_records(p, "domain")
    assert [(r.line, r.data["text"]) for r in recs] == [(1, "First paragraph continues here."), (5, "Second one.")]
    with pytest.raises(ValueError, match="unknown scenario"):
        read_records(p, "poetry")


def test_creative_records_use_one_form_a_file(tmp_path):
    p = write(tmp_path, "c.jsonl", [{"prompt": "Write", "text": "a poem"}, {"text": "just text"}])
    _, problems = read_records(p, "creative")
    assert str(problems[0]) == f"{p}:2: prompt: line 1 has a prompt and line 2 does not; use one record form a file"


def test_extra_keys_in_records_are_ignored_and_counted_or_refused_when_strict(tmp_path):
    """Real exports carry ids and groups: every record with them still reads, once counted; data.strict refuses."""
    from collections import Counter

    rows = [{"text": f"text {i}", "label": "pos" if i % 2 else "neg", "group": i % 3, "id": f"r{i}"} for i in range(6)]
    p = write(tmp_path, "c.jsonl", rows)
    ignored = Counter()
    records, problems = read_records(p, "classification", ignored=ignored)
    assert problems == [] and len(records) == 6 and ignored == {"group": 6, "id": 6}
    assert set(records[0].data) == {"text", "label"}
    records, problems = read_records(p, "classification", strict=True)
    assert not records and str(problems[0]) == (f"{p}:1: group: unknown key (a record has text, label; data.strict "
                                                "is on)")
