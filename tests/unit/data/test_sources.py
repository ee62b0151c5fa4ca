"""The data people already have: Alpaca and ShareGPT records, Parquet / CSV / JSON arrays / saved Hugging Face
datasets, column mappings, and records that carry extra keys (ids, sources) — read into the same examples."""

import json

import pytest

from slmtune.data.sources import describe, read_source
from tests.helpers import write_jsonl

ALPACA = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat", "system": "You translate."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]
WANT = [
    [("user", "Name a primary colour."), ("assistant", "Red.")],
    [("system", "You translate."), ("user", "Translate to French.\n\ncat"), ("assistant", "chat")],
    [("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")],
]


def turns(reading):
    return [[(m["role"], m["content"]) for m in e.messages] for e in reading.examples]


def test_alpaca_and_sharegpt_records_become_chats(tmp_path):
    r = read_source(write_jsonl(tmp_path / "a.jsonl", ALPACA))
    assert r.problems == [] and turns(r) == WANT and r.formats == {"alpaca": 3}
    share = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                                {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "See you."}],
              "system": "Be brief."}]
    r = read_source(write_jsonl(tmp_path / "s.jsonl", share))
    assert r.problems == [] and r.formats == {"sharegpt": 1}
    assert turns(r) == [[("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"),
                         ("assistant", "See you.")]]


def test_problems_in_alpaca_and_sharegpt_name_their_own_fields(tmp_path):
    rows = [{"instruction": "x", "output": ""},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Yo"}]},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "  "}]}]
    r = read_source(write_jsonl(tmp_path / "bad.jsonl", rows))
    got = [str(p).replace(str(tmp_path / "bad.jsonl"), "F") for p in r.problems]
    assert got[0] == "F:1: output: empty"
    assert got[1].startswith("F:2: conversations[1].from: expected one of system, human")
    assert "F:3: conversations[1].value: empty" in got


@pytest.mark.parametrize("layout", ["parquet", "csv", "json-array", "saved", "folder"])
def test_tables_and_saved_datasets_read_as_the_same_examples(tmp_path, layout):
    import datasets

    table = [{**row, "system": row.get("system")} for row in ALPACA]  # a column for every key (null where unset)
    ds = datasets.Dataset.from_list(table)
    if layout == "parquet":
        path = tmp_path / "a.parquet"
        ds.to_parquet(str(path))
    elif layout == "csv":
        path = tmp_path / "a.csv"
        ds.to_csv(str(path), index=False)
    elif layout == "json-array":
        path = tmp_path / "a.json"
        path.write_text(json.dumps(ALPACA))
    elif layout == "saved":
        path = tmp_path / "saved"
        ds.save_to_disk(str(path))
    else:
        path = tmp_path / "parts"
        path.mkdir()
        ds.select(range(2)).to_parquet(str(path / "0.parquet"))
        ds.select(range(2, 3)).to_parquet(str(path / "1.parquet"))
    r = read_source(path)
    assert r.problems == [], r.problems
    assert turns(r) == WANT and [e.line for e in r.examples] == [1, 2, 3]
    assert describe(path) in ("Parquet", "CSV", "JSON", "saved Hugging Face dataset", "folder of data files")


def test_a_bad_row_in_a_table_is_named_by_row_and_field(tmp_path):
    import datasets

    path = tmp_path / "t.parquet"
    rows = ALPACA + [{"instruction": "Say hi.", "input": "", "output": None}]
    datasets.Dataset.from_list([{**row, "system": row.get("system")} for row in rows]).to_parquet(str(path))
    r = read_source(path)
    assert [str(p) for p in r.problems] == [f"{path}: row 4: output: missing"]
    assert len(r.examples) == 3


def test_columns_map_a_source_onto_a_format(tmp_path):
    rows = [{"question": "Capital of France?", "answer": "Paris."}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    r = read_source(path)
    assert "map them with data.columns" in r.problems[0].message and "question, answer" in r.problems[0].message
    r = read_source(path, columns={"question": "instruction", "answer": "output"})
    assert r.problems == [] and turns(r) == [[("user", "Capital of France?"), ("assistant", "Paris.")]]


def test_extra_keys_are_ignored_with_one_note_and_are_errors_when_strict(tmp_path):
    rows = [{**row, "id": i, "source": "export"} for i, row in enumerate(ALPACA)]
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "id": 9})
    path = write_jsonl(tmp_path / "x.jsonl", rows[:3])
    r = read_source(path)
    assert r.problems == [] and len(r.examples) == 3
    assert r.ignored == {"id": 3, "source": 3}
    assert r.ignored_note(str(path)) == (f"{path}: ignored key(s) not part of the data format: id (3 records), "
                                         "source (3 records) (data.strict: true makes them errors)")
    r = read_source(path, strict=True)
    assert not r.examples and [str(p) for p in r.problems][:2] == [
        f"{path}:1: id: unknown key (data.strict is on)", f"{path}:1: source: unknown key (data.strict is on)"]
    # keys inside a chat message stay errors: they change what the model is trained on
    bad = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "a", "mood": "x"},
                                                           {"role": "assistant", "content": "b"}]}])
    assert [p.path for p in read_source(bad).problems] == ["messages[0].mood"]


def test_a_csv_column_of_numbers_is_still_text(tmp_path):
    path = tmp_path / "sums.csv"
    path.write_text("instruction,input,output\nAdd the numbers.,2 and 3,5\nAdd the numbers.,1 and 1,2\n")
    r = read_source(path)
    assert r.problems == [] and [e.messages[-1]["content"] for e in r.examples] == ["5", "2"]
