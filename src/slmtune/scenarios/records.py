"""Scenario record formats: reading and checking them, every problem as FILE:LINE: field: message.

Each scenario has a simple record format (docs/scenarios.md):

    domain          {"text"} lines, or .txt files (blank-line separated paragraphs)
    classification  {"text", "label"}
    ner             {"tokens": [...], "tags": [...]} (BIO), {"text", "entities": [{"start", "end", "label"}]},
                    or a CoNLL file (.conll/.bio: "token tag" lines, blank line between sentences)
    translation     {"src", "tgt", "src_lang", "tgt_lang"}
    qa              {"context", "question", "answer"}
    chat            OpenAI chat messages ({"messages": [...]})
    creative        {"prompt", "text"} or {"text"}
    tools           OpenAI tool-calling chat ({"tools": [...], "messages": [...]}, the last message the reference)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from slmtune.config import SCENARIO_NAMES
from slmtune.data.formats import DataError, Problem, _check_chat, _check_tools, jsonl_lines, jsonl_records
from slmtune.scenarios.metrics import bio_spans

_STR_FIELDS = {
    "classification": (("text", "label"), ()),
    "translation": (("src", "tgt", "src_lang", "tgt_lang"), ()),
    "qa": (("context", "question", "answer"), ()),
    "creative": (("text",), ("prompt",)),
    "domain": (("text",), ()),
}


@dataclass
class Record:
    line: int
    data: dict = field(default_factory=dict)


def _check_strings(obj: dict, required: tuple, optional: tuple, add) -> bool:
    ok = True
    for key in required:
        if key not in obj:
            add(key, "missing")
            ok = False
        elif not isinstance(obj[key], str):
            add(key, f"expected a string, got {type(obj[key]).__name__}")
            ok = False
        elif not obj[key].strip():
            add(key, "empty")
            ok = False
    for key in optional:
        if key in obj and not isinstance(obj[key], str):
            add(key, f"expected a string, got {type(obj[key]).__name__}")
            ok = False
    return ok


def _check_ner(obj: dict, add) -> dict | None:
    if "tokens" in obj or "tags" in obj:
        toks, tags = obj.get("tokens"), obj.get("tags")
        ok = True
        for key, val in (("tokens", toks), ("tags", tags)):
            if not isinstance(val, list) or not all(isinstance(x, str) for x in val):
                add(key, "expected a list of strings")
                ok = False
        if not ok:
            return None
        if len(toks) != len(tags):
            add("tags", f"{len(tags)} tags for {len(toks)} tokens")
            return None
        if not toks:
            add("tokens", "empty")
            return None
        for i, tag in enumerate(tags):
            if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
                add(f"tags[{i}]", f"{tag!r} is not a BIO tag (O, B-TYPE or I-TYPE)")
                return None
        return {"text": " ".join(toks), "entities": bio_spans(toks, tags)}
    if not _check_strings({k: v for k, v in obj.items() if k != "entities"}, ("text",), (), add):
        return None
    ents = obj.get("entities")
    if not isinstance(ents, list):
        add("entities", "missing or not a list (use [] for a text without entities)")
        return None
    text, out = obj["text"], []
    for i, e in enumerate(ents):
        if not isinstance(e, dict) or set(e) != {"start", "end", "label"}:
            add(f"entities[{i}]", "expected an object with start, end and label")
            return None
        s, t, lab = e["start"], e["end"], e["label"]
        if not (isinstance(s, int) and isinstance(t, int) and 0 <= s < t <= len(text)):
            add(f"entities[{i}]", f"span {s}..{t} is not inside the text (length {len(text)})")
            return None
        if not isinstance(lab, str) or not lab.strip():
            add(f"entities[{i}].label", "expected a non-empty string")
            return None
        out.append((lab, text[s:t]))
    return {"text": text, "entities": out}


def record_keys(scenario: str, obj: dict) -> tuple[str, ...]:
    """The keys a record of this scenario (in the form ``obj`` is written in) is made of."""
    if scenario == "ner":
        return ("tokens", "tags") if "tokens" in obj or "tags" in obj else ("text", "entities")
    if scenario == "chat":
        return ("messages",)
    if scenario == "tools":
        return ("tools", "messages")
    required, optional = _STR_FIELDS[scenario]
    return required + optional


def check_record(scenario: str, obj, add, *, strict: bool = False, ignored: Counter | None = None) -> dict | None:
    """The record as the scenario uses it, or None after reporting its problems through ``add(field, message)``.
    Keys beyond the record's are counted in ``ignored`` (real exports carry ids, sources, groups); with ``strict``
    they are problems."""
    if not isinstance(obj, dict):
        add("(root)", f"expected a JSON object, got {type(obj).__name__}")
        return None
    keys = record_keys(scenario, obj)
    extra = [k for k in obj if k not in keys]
    if extra and strict:
        for k in extra:
            add(k, f"unknown key (a record has {', '.join(keys)}; data.strict is on)")
        return None
    if extra:
        if ignored is not None:
            ignored.update(extra)
        obj = {k: v for k, v in obj.items() if k in keys}
    if scenario == "ner":
        return _check_ner(obj, add)
    if scenario in ("chat", "tools"):
        tools = None
        if scenario == "tools":
            if not obj.get("tools"):
                add("tools", "missing (a tools record lists the functions the request may call)")
                return None
            ok, tools = _check_tools(obj, add)
            if "messages" not in obj:
                add("messages", "missing")
            if not ok or "messages" not in obj:
                return None
        msgs = _check_chat(obj, add, tools=tools, strict=strict)
        if msgs is None:
            return None
        if msgs[-1]["role"] != "assistant":
            add("messages", "the last message must be the assistant's reply (the reference)")
            return None
        return {"messages": msgs, "tools": tools} if scenario == "tools" else {"messages": msgs}
    required, optional = _STR_FIELDS[scenario]
    return dict(obj) if _check_strings(obj, required, optional, add) else None


def _read_conll(path: Path) -> tuple[list[Record], list[Problem]]:
    records, problems, toks, tags, start = [], [], [], [], 1
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, raw in enumerate([*lines, ""], start=1):
        if not raw.strip() or raw.startswith("-DOCSTART-"):
            if toks:
                records.append(Record(start, {"text": " ".join(toks), "entities": bio_spans(toks, tags)}))
            toks, tags, start = [], [], lineno + 1
            continue
        parts = raw.split()
        tag = parts[-1] if len(parts) >= 2 else ""
        if len(parts) < 2 or not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
            problems.append(Problem(str(path), lineno, "(line)",
                                    f"expected 'TOKEN ... TAG' with a BIO tag, got {raw!r}"))
            continue
        toks.append(parts[0])
        tags.append(tag)
    return records, problems


def _read_txt(path: Path) -> list[Record]:
    records, buf, start = [], [], 1
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, raw in enumerate([*lines, ""], start=1):
        if raw.strip():
            if not buf:
                start = lineno
            buf.append(raw.strip())
        elif buf:
            records.append(Record(start, {"text": " ".join(buf)}))
            buf = []
    return records


def read_records(path: str | Path, scenario: str, *, strict: bool = False,
                 ignored: Counter | None = None) -> tuple[list[Record], list[Problem]]:
    """Read a scenario data file (JSONL; also .txt for domain/creative, .conll/.bio for ner). Keys beyond a
    record's are counted in ``ignored`` (problems with ``strict``)."""
    if scenario not in SCENARIO_NAMES:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIO_NAMES)}")
    path = Path(path)
    if not path.exists():
        return [], [Problem(str(path), 0, "(file)", "no such file")]
    if path.suffix == ".txt" and scenario in ("domain", "creative"):
        recs = _read_txt(path)
        return recs, [] if recs else [Problem(str(path), 1, "(file)", "no text (the file is empty)")]
    if path.suffix in (".conll", ".bio") and scenario == "ner":
        return _read_conll(path)
    records, problems = [], []
    with open(path, "rb") as fh:  # a line at a time, lines ending at \n only (JSON strings may hold U+2028)
        for lineno, obj in jsonl_records(jsonl_lines(fh)):

            def add(fld: str, msg: str, _line=lineno) -> None:
                problems.append(Problem(str(path), _line, fld, msg))

            if isinstance(obj, ValueError):
                add("(json)" if str(obj).startswith("invalid JSON") else "(line)", str(obj))
                continue
            rec = check_record(scenario, obj, add, strict=strict, ignored=ignored)
            if rec is not None:
                records.append(Record(lineno, rec))
    if not records and not problems:
        problems.append(Problem(str(path), 1, "(file)", "no records (the file is empty)"))
    if scenario == "creative" and records:  # one form a file: prompted answers or text continuation, not both
        first = records[0]
        for r in records[1:]:
            if ("prompt" in r.data) != ("prompt" in first.data):
                has, lacks = (r, first) if "prompt" in r.data else (first, r)
                problems.append(Problem(str(path), r.line, "prompt", f"line {has.line} has a prompt and line "
                                        f"{lacks.line} does not; use one record form a file"))
                break
    return records, problems


def load_records(path: str | Path, scenario: str, *, strict: bool = False,
                 ignored: Counter | None = None) -> list[Record]:
    """Like :func:`read_records` but raises :class:`DataError` with every problem."""
    records, problems = read_records(path, scenario, strict=strict, ignored=ignored)
    if problems:
        raise DataError(problems)
    return records
