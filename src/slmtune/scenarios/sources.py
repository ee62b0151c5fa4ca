"""Converters from the pinned registry packages to scenario records (see fetch.py for download and checks).

Each converter takes the folder the package was unpacked into and returns the records of its scenario. Nothing
here is committed third-party text: the packages are downloaded at setup time (docs/datasets.md lists sources and
licences).
"""

from __future__ import annotations

import json
import random
import re
import tarfile
from pathlib import Path

from slmtune.data.tools import argument_problems


def _one(root: Path, pattern: str) -> Path:
    hits = sorted(root.rglob(pattern))
    if not hits:
        raise FileNotFoundError(f"{root}: no file matching {pattern!r} in the unpacked package")
    return hits[0]


# --- classification: movie-review sentiment (vaderSentiment 3.3.2 sdist) ---------------------------------------
def sentiment(root: Path) -> list[dict]:
    """Movie-review snippets with the mean rating of 20 human raters (−4..4): ≥ 1 positive, ≤ −1 negative, the
    near-neutral middle left out."""
    inner = _one(root, "hutto_ICWSM_2014.tar.gz")
    with tarfile.open(inner) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("movieReviewSnippets_GroundTruth.txt"))
        text = tf.extractfile(member).read().decode("utf-8", errors="replace")
    out = []
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) != 3:
            continue
        rating, snippet = float(parts[1]), " ".join(parts[2].replace("''", '"').split())
        if rating >= 1.0:
            out.append({"text": snippet, "label": "positive"})
        elif rating <= -1.0:
            out.append({"text": snippet, "label": "negative"})
    return out


# --- Debian fortunes: topic classification and poems ------------------------------------------------------------
TOPICS = ("computers", "food", "law", "medicine", "politics", "science")


def _fortunes(path: Path) -> list[str]:
    entries, buf = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip() == "%":
            if buf:
                entries.append("\n".join(buf).strip("\n"))
            buf = []
        else:
            buf.append(line.rstrip())
    if buf:
        entries.append("\n".join(buf).strip("\n"))
    return [e for e in entries if e.strip()]


def topics(root: Path) -> list[dict]:
    """Fortune-file entries labelled with their file's topic; short entries only (≤ 300 characters)."""
    out = []
    for topic in TOPICS:
        for e in _fortunes(_one(root, f"fortunes/{topic}")):
            text = " ".join(e.split())
            if 20 <= len(text) <= 300:
                out.append({"text": text, "label": topic})
    return out


def poems(root: Path) -> list[dict]:
    """Songs and poems from the fortunes 'songs-poems' file: entries of 3–16 lines, ≤ 600 characters."""
    out = []
    for e in _fortunes(_one(root, "fortunes/songs-poems")):
        lines = [ln.strip() for ln in e.splitlines()]
        if 3 <= len([ln for ln in lines if ln]) <= 16 and len(e) <= 600:
            out.append({"text": "\n".join(lines).strip()})
    return out


# --- translation: German–English (Debian trans-de-en, the Ding dictionary) --------------------------------------
_NOTES = re.compile(r"\{[^}]*\}|\[[^\]]*\]|<[^>]*>")


def _first_sense(side: str) -> str:
    sense = side.split(" | ")[0].split(";")[0]
    return " ".join(_NOTES.sub("", sense).split()).strip(" ,")


def de_en(root: Path) -> list[dict]:
    """German → English phrase pairs of at least four words a side (the dictionary's example phrases)."""
    out, seen = [], set()
    for line in _one(root, "trans/de-en").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#") or " :: " not in line:
            continue
        de, en = (_first_sense(s) for s in line.split(" :: ", 1))
        if len(de.split()) >= 4 and len(en.split()) >= 4 and len(de) <= 160 and (de, en) not in seen:
            seen.add((de, en))
            out.append({"src": de, "tgt": en, "src_lang": "de", "tgt_lang": "en"})
    return out


# --- reST sources of the Python documentation (Debian python3.11-doc): QA and domain text ------------------------
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_HEADING_CHARS = set("=-~^*#\"'+")


def _clean_rst(lines: list[str]) -> str:
    """Prose of a reST block: directives and literal blocks dropped, roles and inline literals unwrapped."""
    out, skip_indent = [], None
    for ln in lines:
        if skip_indent is not None:
            if ln.strip() and (len(ln) - len(ln.lstrip())) <= skip_indent:
                skip_indent = None
            else:
                continue
        if ln.lstrip().startswith(".."):
            skip_indent = len(ln) - len(ln.lstrip())
            continue
        text = _ROLE.sub(r"\1", ln).replace("``", "")
        text = re.sub(r"`([^`<]+?)(?:\s*<[^>]*>)?`_*", r"\1", text)
        if text.rstrip().endswith("::"):
            text = text.rstrip()[:-1]
            skip_indent = len(ln) - len(ln.lstrip())
        out.append(text)
    return " ".join(" ".join(out).split())


def _sections(path: Path) -> list[tuple[str, list[str]]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    heads = [i for i in range(len(lines) - 1) if lines[i].strip() and len(set(lines[i + 1].strip())) == 1
             and set(lines[i + 1].strip()) <= _HEADING_CHARS and len(lines[i + 1].strip()) >= len(lines[i].strip())]
    return [(lines[h].strip(), lines[h + 2:(heads[k + 1] if k + 1 < len(heads) else len(lines))])
            for k, h in enumerate(heads)]


def _first_sentence(text: str) -> str:
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).strip()


def python_faq(root: Path) -> list[dict]:
    """Questions of the Python FAQ with their answer as context; the reference answer is the answer's first
    sentence (what a short reply to the question says)."""
    out = []
    for f in sorted(root.rglob("_sources/faq/*.rst.txt")):
        for head, body in _sections(f):
            if not head.endswith("?"):
                continue
            context = _clean_rst(body)
            if len(context) < 80:
                continue
            context = context[:1200]
            out.append({"context": context, "question": head, "answer": _first_sentence(context)})
    return out


def python_tutorial(root: Path) -> list[dict]:
    """The prose of the Python tutorial as ~150-word passages (continued pre-training on a technical domain)."""
    out = []
    for f in sorted(root.rglob("_sources/tutorial/*.rst.txt")):
        words = []
        for _head, body in _sections(f):
            words += _clean_rst(body).split()
            while len(words) >= 150:
                out.append({"text": " ".join(words[:150])})
                words = words[150:]
    return out


# --- chat: chitchat-dataset (human–human conversations) -----------------------------------------------------------
def chitchat(root: Path) -> list[dict]:
    """Conversations as alternating user/assistant turns (the first speaker is the user), the first six turns,
    ending on an assistant turn."""
    data = json.loads(_one(root, "chitchat_dataset/dataset.json").read_text(encoding="utf-8"))
    out = []
    for key in sorted(data):
        turns = [" ".join(m["text"] for m in turn if m.get("text", "").strip()) for turn in data[key]["messages"]]
        turns = [t for t in turns if t.strip()][:6]
        if len(turns) % 2:
            turns = turns[:-1]
        if len(turns) >= 2:
            out.append({"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                                     for i, t in enumerate(turns)]})
    return out


# --- NER: synthetic, clearly labelled ---------------------------------------------------------------------------
FIRST = ["Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Laura",
         "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Samir", "Tanja", "Umar", "Vera", "Wei", "Ximena",
         "Yusuf", "Zoe", "Lars", "Mina", "Pavel", "Sofia"]
LAST = ["Schmidt", "Okafor", "Rossi", "Tanaka", "Novak", "Garcia", "Lindqvist", "Haddad", "Kowalski", "Dubois",
        "Mensah", "Fischer", "Moreau", "Silva", "Ivanova", "Chen", "Murphy", "Jansen", "Costa", "Nakamura"]
CITY = ["Berlin", "Lagos", "Lisbon", "Osaka", "Toronto", "Nairobi", "Krakow", "Lyon", "Bergen", "Porto", "Quito",
        "Hanoi", "Seville", "Tbilisi", "Dublin", "Adelaide", "Valencia", "Gdansk", "Mombasa", "Utrecht"]
ORG = ["Northwind Labs", "Bluefin Energy", "Atlas Freight", "the Riverside Clinic", "Helios Bank",
       "the City Library", "Orchid Software", "Granite Insurance", "the Harbor Museum", "Sunleaf Foods",
       "Kestrel Airlines", "the National Theatre", "Pinecone Robotics", "Meridian Press", "Cobalt Mining"]
TEMPLATES = [
    "{PER} moved to {LOC} to work for {ORG}.", "{ORG} opened a new office in {LOC} last spring.",
    "Yesterday {PER} met {PER} in {LOC}.", "{PER} has led {ORG} since 2019.",
    "The mayor of {LOC} thanked {ORG} for the donation.", "According to {PER}, {ORG} will hire forty people.",
    "{PER} flew from {LOC} to {LOC} on Monday.", "Engineers at {ORG} in {LOC} built the prototype.",
    "{PER} left {ORG} after ten years.", "A spokesperson for {ORG} declined to comment.",
    "{PER} grew up near {LOC} before studying abroad.", "The conference in {LOC} was opened by {PER}.",
    "{ORG} and {ORG} signed a partnership in {LOC}.", "Nobody expected {PER} to win the race in {LOC}.",
    "The weather in {LOC} was mild all week.", "We had lunch at a small cafe near the station.",
    "{PER} wrote to {PER} about the delay at {ORG}.", "Residents of {LOC} voted to expand the tram line.",
]


def ner_synthetic(seed: int = 0, n: int = 1200) -> list[dict]:
    """Sentences filled from templates with invented people, real city names and invented organisations, with
    character-offset entities (PER, LOC, ORG). Synthetic: it measures the pipeline, not real-world NER."""
    rng = random.Random(seed)
    pools = {"PER": lambda: f"{rng.choice(FIRST)} {rng.choice(LAST)}", "LOC": lambda: rng.choice(CITY),
             "ORG": lambda: rng.choice(ORG)}
    out = []
    for _ in range(n):
        template = rng.choice(TEMPLATES)
        text, ents, pos = "", [], 0
        for m in re.finditer(r"\{(PER|LOC|ORG)\}", template):
            text += template[pos:m.start()]
            value = pools[m.group(1)]()
            ents.append({"start": len(text), "end": len(text) + len(value), "label": m.group(1)})
            text += value
            pos = m.end()
        text += template[pos:]
        out.append({"text": text, "entities": ents})
    return out


# --- tools: the Berkeley Function Calling Leaderboard's questions (bfcl-eval wheel) -------------------------------
BFCL_FILES = ("simple_python", "multiple", "live_simple", "irrelevance")
NO_TOOL_REPLY = "None of the available functions fits this request."  # our text for BFCL's no-call records
_BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": None, "list": "array"}


def _bfcl_schema(schema):
    """BFCL's parameter schemas use Python type names (dict, float, tuple, any): as JSON Schema."""
    if isinstance(schema, list):
        return [_bfcl_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k == "type" and isinstance(v, str):
            mapped = _BFCL_TYPES.get(v, v)
            if mapped is not None:
                out[k] = mapped
        elif k in ("properties", "$defs"):
            out[k] = {name: _bfcl_schema(s) for name, s in v.items()}
        elif k == "optional":  # not JSON Schema
            continue
        else:
            out[k] = _bfcl_schema(v)
    return out


def _bfcl_value(accepted):
    """The reference value of one argument: the first accepted (nested objects resolved the same way); None when
    '' (left out) is accepted first."""
    first = accepted[0] if isinstance(accepted, list) and accepted else accepted
    if first == "" or first == []:
        return None
    if isinstance(first, dict):
        return {k: x for k, v in first.items() if (x := _bfcl_value(v)) is not None}
    if isinstance(first, list) and first and all(isinstance(d, dict) for d in first):
        return [_bfcl_value([d]) for d in first]
    return first


def bfcl(root: Path) -> list[dict]:
    """Single-turn requests with their functions and the expected call (simple, multiple-choice and live user
    questions), and requests no function fits (irrelevance: the reference is a short refusal, our text). Each
    record is an OpenAI tool-calling chat record whose last message is the reference turn."""
    data = next(root.rglob("bfcl_eval/data"))
    out = []
    for part in BFCL_FILES:
        questions = [json.loads(x) for x in (data / f"BFCL_v4_{part}.json").read_text().splitlines() if x.strip()]
        answers = {}
        answer_file = data / "possible_answer" / f"BFCL_v4_{part}.json"
        if answer_file.exists():
            answers = {a["id"]: a["ground_truth"] for a in map(json.loads, answer_file.read_text().splitlines())}
        for q in questions:
            turns = q["question"][0] if q["question"] and isinstance(q["question"][0], list) else q["question"]
            if len(turns) != 1 or turns[0].get("role") != "user":
                continue
            tools = [{"type": "function", "function": {"name": f["name"], "description": f.get("description", ""),
                                                       "parameters": _bfcl_schema(f["parameters"])}}
                     for f in q["function"]]
            truth = answers.get(q["id"])
            if part == "irrelevance":
                reply = {"role": "assistant", "content": NO_TOOL_REPLY}
            elif not truth or len(truth) != 1:
                continue
            else:
                (name, args), = truth[0].items()
                values = {k: _bfcl_value(v) for k, v in args.items()}
                schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == name)
                if argument_problems({k: v for k, v in values.items() if v is not None}, schema):
                    continue  # a reference we cannot express as one valid call: left out
                reply = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {
                        "name": name, "arguments": json.dumps({k: v for k, v in values.items() if v is not None})}}]}
            out.append({"tools": tools, "messages": [{"role": "user", "content": turns[0]["content"]}, reply]})
    return out
