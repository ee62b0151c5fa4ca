"""Scenario metrics on model outputs: pure functions of predictions and references.

BLEU and chrF come from sacrebleu (the reference implementation); accuracy/macro-F1, entity-level F1, SQuAD-style
exact match and token F1, and distinct-n are a few lines each and written here so their edge cases (unparseable
label, empty prediction, overlapping spans) are explicit and tested (tests/unit/test_scenario_metrics.py).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter

UNPARSEABLE = "(unparseable)"


# --- classification -----------------------------------------------------------------------------------------------
def parse_label(text: str, labels: list[str]) -> str | None:
    """The label the output names, strictly: the whole answer (case, surrounding space, quotes and a final period
    ignored) must be one label. Anything else, including an empty answer, is unparseable (None)."""
    t = text.strip().strip("\"'`*").rstrip(".").strip().casefold()
    for label in labels:
        if t == label.casefold():
            return label
    return None


def parse_label_lenient(text: str, labels: list[str]) -> str | None:
    """The one label named anywhere in the output as a word (None when none or several are): a looser reading,
    reported beside the strict accuracy so a base model that answers in sentences is not scored only on form."""
    found = [lab for lab in labels if re.search(rf"(?<!\w){re.escape(lab)}(?!\w)", text, re.IGNORECASE)]
    return found[0] if len(found) == 1 else None


def classification_scores(preds: list[str | None], golds: list[str], labels: list[str]) -> dict:
    """Accuracy, macro-F1 over ``labels`` (an unparseable prediction is wrong for every class) and the confusion
    matrix (rows: gold, columns: predicted, with an ``(unparseable)`` column)."""
    n = len(golds)
    cols = [*labels, UNPARSEABLE]
    confusion = {g: {c: 0 for c in cols} for g in labels}
    for p, g in zip(preds, golds):
        confusion[g][p if p is not None else UNPARSEABLE] += 1
    f1s = []
    for label in labels:
        tp = confusion[label][label]
        pred_n = sum(confusion[g][label] for g in labels)
        gold_n = sum(confusion[label].values())
        f1s.append(_f1(tp, pred_n, gold_n))
    correct = sum(confusion[g][g] for g in labels)
    return {"accuracy": correct / n if n else 0.0, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
            "unparseable": sum(p is None for p in preds), "confusion": confusion, "labels": labels}


def _f1(tp: int, pred_n: int, gold_n: int) -> float:
    p = tp / pred_n if pred_n else 0.0
    r = tp / gold_n if gold_n else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


# --- named entities -----------------------------------------------------------------------------------------------
_ENTITY_LINE = re.compile(r"^\s*[-*]?\s*([A-Za-z_]+)\s*:\s*(.+?)\s*$")


def parse_entities(text: str, types: list[str]) -> list[tuple[str, str]]:
    """``TYPE: mention`` lines (the NER scenario's answer format) as (type, mention) pairs; other lines, unknown
    types and 'none' are ignored."""
    known = {t.casefold(): t for t in types}
    out = []
    for line in text.splitlines():
        m = _ENTITY_LINE.match(line)
        if m and m.group(1).casefold() in known:
            out.append((known[m.group(1).casefold()], m.group(2)))
    return out


def entity_scores(preds: list[list[tuple[str, str]]], golds: list[list[tuple[str, str]]]) -> dict:
    """Micro precision/recall/F1 over entities, matched exactly on (type, mention text) as multisets per example:
    a mention listed twice counts twice; overlapping gold spans are separate entities."""
    tp = pred_n = gold_n = 0
    for p, g in zip(preds, golds):
        cp, cg = Counter(p), Counter(g)
        tp += sum((cp & cg).values())
        pred_n += sum(cp.values())
        gold_n += sum(cg.values())
    precision = tp / pred_n if pred_n else 0.0
    recall = tp / gold_n if gold_n else 0.0
    return {"precision": precision, "recall": recall, "f1": _f1(tp, pred_n, gold_n), "true_positives": tp,
            "predicted": pred_n, "gold": gold_n}


def bio_spans(tokens: list[str], tags: list[str]) -> list[tuple[str, str]]:
    """(type, mention) for each entity of a BIO-tagged sentence; an I- tag without a B- starts an entity (CoNLL)."""
    out: list[tuple[str, list[str]]] = []
    cur: tuple[str, list[str]] | None = None
    for tok, tag in zip(tokens, tags):
        if tag == "O" or not tag:
            cur = None
            continue
        pos, _, typ = tag.partition("-")
        if pos == "B" or cur is None or cur[0] != typ:
            cur = (typ, [tok])
            out.append(cur)
        else:
            cur[1].append(tok)
    return [(t, " ".join(words)) for t, words in out]


# --- QA, chat replies ---------------------------------------------------------------------------------------------
def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    """SQuAD token F1 of normalised answers; two empty answers match (1.0), one empty one does not (0.0)."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    return _f1(common, len(p), len(g))


def qa_scores(preds: list[str], golds: list[str]) -> dict:
    n = len(golds)
    return {"exact_match": sum(map(exact_match, preds, golds)) / n if n else 0.0,
            "token_f1": sum(map(token_f1, preds, golds)) / n if n else 0.0}


# --- translation --------------------------------------------------------------------------------------------------
def translation_scores(preds: list[str], refs: list[str]) -> dict:
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(preds, [refs]).score, "chrf": sacrebleu.corpus_chrf(preds, [refs]).score}


# --- generation diversity and form --------------------------------------------------------------------------------
def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the outputs (whitespace tokens); 0 when there are none."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def form_scores(preds: list[str], refs: list[str]) -> dict:
    """Length and format adherence against the references: median word-count ratio, and the share of outputs whose
    line count is within a factor of two of the reference's (a poem answered in one line fails)."""
    ratios = sorted(len(p.split()) / max(1, len(r.split())) for p, r in zip(preds, refs))
    lines_ok = [0.5 <= max(1, len(p.strip().splitlines())) / max(1, len(r.strip().splitlines())) <= 2.0
                for p, r in zip(preds, refs)]
    return {"length_ratio_median": ratios[len(ratios) // 2] if ratios else 0.0,
            "line_format_match": sum(lines_ok) / len(lines_ok) if lines_ok else 0.0}


# --- tools --------------------------------------------------------------------------------------------------------
def _normal(value):
    """JSON normalisation for comparing arguments: numbers by value (1 == 1.0), objects by their keys."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in sorted(value.items())}
    return value


def _call_key(call: dict) -> str:
    try:
        args = json.loads(call["function"]["arguments"])
    except (json.JSONDecodeError, TypeError):
        args = call["function"]["arguments"]
    return json.dumps([call["function"]["name"], _normal(args)], sort_keys=True)


def tool_scores(outputs: list[str], references: list[dict], tools: list[list[dict]]) -> tuple[dict, list[dict]]:
    """Function-calling scores of generated replies against reference turns (each ``{"content"?, "tool_calls"?}``):

    * call_accuracy — a call made exactly when the reference makes one;
    * name_accuracy — of the references that call: the same function names (as a multiset);
    * exact_arguments — of those: the same calls, arguments compared after JSON normalisation (key order and
      1 vs 1.0 ignored; every other difference, an optional argument added or left out, counts);
    * valid_json — of the replies that open a ``<tool_call>`` block: every block read as a call;
    * schema_valid — of the calls made: arguments valid under the function's parameter schema.

    Returns the scores and one row of detail per output."""
    from slmtune.data.tools import CALL_OPEN, argument_problems, parse_reply

    rows, n_ref_calls = [], 0
    hits = {"call": 0, "name": 0, "exact": 0, "attempted": 0, "parsed": 0, "calls": 0, "valid": 0}
    for out, ref, fns in zip(outputs, references, tools):
        _, calls = parse_reply(out)
        want = ref.get("tool_calls") or []
        by_name = {t["function"]["name"]: t["function"].get("parameters", {}) for t in fns}
        row = {"calls": [[c["function"]["name"], c["function"]["arguments"]] for c in calls]}
        hits["call"] += bool(calls) == bool(want)
        if CALL_OPEN in out:
            hits["attempted"] += 1
            hits["parsed"] += bool(calls) and out.count(CALL_OPEN) == len(calls)
        for c in calls:
            hits["calls"] += 1
            try:
                ok = c["function"]["name"] in by_name and not argument_problems(
                    json.loads(c["function"]["arguments"]), by_name[c["function"]["name"]])
            except json.JSONDecodeError:
                ok = False
            hits["valid"] += ok
        if want:
            n_ref_calls += 1
            row["name_ok"] = sorted(c["function"]["name"] for c in calls) == sorted(
                c["function"]["name"] for c in want)
            row["exact"] = sorted(map(_call_key, calls)) == sorted(map(_call_key, want))
            hits["name"] += row["name_ok"]
            hits["exact"] += row["exact"]
        rows.append(row)
    n = len(outputs)
    return {"call_accuracy": hits["call"] / n if n else 0.0,
            "name_accuracy": hits["name"] / n_ref_calls if n_ref_calls else 0.0,
            "exact_arguments": hits["exact"] / n_ref_calls if n_ref_calls else 0.0,
            "valid_json": hits["parsed"] / hits["attempted"] if hits["attempted"] else 0.0,
            "schema_valid": hits["valid"] / hits["calls"] if hits["calls"] else 0.0,
            "calls_made": hits["calls"], "references_with_calls": n_ref_calls}, rows
