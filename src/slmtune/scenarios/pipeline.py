"""A scenario run: records → chat examples before training; base vs tuned metric and the report after it.

Files in the run directory:

    scenario.json                 name, meta (labels / entity types), record files
    data/train.jsonl              the training examples the records became (readable; what the model saw)
    data/validation.jsonl         the same for the held-out records
    scenario/base/, scenario/tuned/   scores.json + outputs.jsonl of each model on the held-out records
    report.md, plots/*.png        written by ``slmtune report`` (and after training)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from slmtune.data.formats import DataError, Problem, Reading
from slmtune.inference.generate import ChatModel, Source, locate
from slmtune.scenarios.catalog import build_meta, to_example
from slmtune.scenarios.evaluate import SCORES_FILE, evaluate_scenario
from slmtune.scenarios.records import Record, load_records, read_records
from slmtune.training.run import holdout_split

SCENARIO_FILE = "scenario.json"


def _write_examples(path: Path, name: str, meta: dict, records: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for r in records:
            fh.write(json.dumps(to_example(name, meta, r).as_record(), ensure_ascii=False) + "\n")


def records_as_examples(src: str | Path, name: str, out: Path, ignored: Counter | None = None):
    """Read a scenario's records from ``src`` and, when they have no problem, write the chat examples they become to
    ``out`` (one per record, in order). Returns ``(records, problems)``; keys beyond the records' are counted in
    ``ignored``."""
    records, problems = read_records(src, name, ignored=ignored)
    if not problems:
        _write_examples(out, name, build_meta(name, records), records)
    return records, problems


def prepare(cfg, run_dir: Path) -> list[str]:
    """Validate the scenario records, save meta, write the converted data and point ``cfg.data`` at it (in place).
    Returns warnings for the run's events (keys the records have beyond the scenario's, ignored)."""
    name, d = cfg.scenario.name, cfg.data
    ignored = {"train": Counter(), "validation": Counter()}
    train = load_records(d.train, name, strict=d.strict, ignored=ignored["train"])
    val = load_records(d.validation, name, strict=d.strict, ignored=ignored["validation"]) if d.validation else []
    notes = [Reading(ignored=ignored[k]).ignored_note(path) for k, path in (("train", d.train),
                                                                           ("validation", d.validation))]
    if not val and d.validation_split:
        train, val = holdout_split(train, d.validation_split, cfg.train.seed)  # the engine's own split
    meta = build_meta(name, train)
    if name == "classification" and len(meta["labels"]) < 2:
        raise DataError([Problem(d.train, 1, "label", f"only one label in the data ({meta['labels']}); "
                                 "classification needs at least two")])
    (run_dir / SCENARIO_FILE).write_text(json.dumps(
        {"name": name, "meta": meta, "train": d.train, "validation": d.validation,
         "validation_lines": [r.line for r in val] if not d.validation else None}, indent=2))
    _write_examples(run_dir / "data" / "train.jsonl", name, meta, train)
    d.train = str(run_dir / "data" / "train.jsonl")
    if val:
        _write_examples(run_dir / "data" / "validation.jsonl", name, meta, val)
        d.validation = str(run_dir / "data" / "validation.jsonl")
    d.validation_split = 0.0
    return [n for n in notes if n]


def load_info(run_dir: str | Path) -> dict | None:
    f = Path(run_dir) / SCENARIO_FILE
    return json.loads(f.read_text()) if f.exists() else None


def heldout_records(run_dir: str | Path) -> list[Record]:
    """The validation records a scenario run held out (from its file, or the seeded split of its training file)."""
    info = load_info(run_dir)
    if info is None:
        return []
    if info["validation"]:
        return load_records(info["validation"], info["name"])
    lines = set(info["validation_lines"] or [])
    return [r for r in load_records(info["train"], info["name"]) if r.line in lines]


def scored_dir(run_dir: str | Path, kind: str) -> Path:
    """Where a scenario run keeps the ``kind`` ("base" or "tuned") model's scores.json and outputs.jsonl."""
    return Path(run_dir) / "scenario" / kind


def read_scores(run_dir: str | Path) -> dict:
    """The scores each model of a scenario run was given, by kind ("base", "tuned"); those not scored are absent."""
    files = {kind: scored_dir(run_dir, kind) / SCORES_FILE for kind in ("base", "tuned")}
    return {kind: json.loads(f.read_text()) for kind, f in files.items() if f.exists()}


def evaluate_models(run_dir: str | Path, name: str, meta: dict, records: list[Record], which: tuple[str, ...],
                    max_records: int | None = None, progress: bool = False, log=print) -> dict:
    """Score the base and/or tuned model of a run on ``records``; results under RUN/scenario/{base,tuned}/."""
    run_dir = Path(run_dir)
    records = records[:max_records] if max_records else records
    src = locate(run_dir)
    out = {}
    for kind in which:
        model = ChatModel(src) if kind == "tuned" else ChatModel(Source(src.base, src.base_dir))
        log(f"Scenario {name}: scoring the {kind} model on {len(records)} held-out records")
        out[kind] = evaluate_scenario(model, name, meta, records, scored_dir(run_dir, kind), progress=progress)
        del model
    return out
