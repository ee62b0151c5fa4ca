"""Run a scenario's metric on a model: batched greedy generation (and/or eval loss), outputs saved beside scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from slmtune.data.tokenize import encode_example
from slmtune.evaluation.loss import evaluate_encoded
from slmtune.inference.generate import generation_kwargs
from slmtune.scenarios import metrics as M
from slmtune.scenarios.catalog import CREATIVE_PREFIX_WORDS, get, prompt_messages, reference, to_example
from slmtune.scenarios.records import Record

SCORES_FILE = "scores.json"
OUTPUTS_FILE = "outputs.jsonl"


@torch.inference_mode()
def _continue_batch(chat_model, prefixes: list[str], max_new_tokens: int) -> list[str]:
    """Greedy raw-text continuation (no chat template): for text-only creative records."""
    tok = chat_model.tokenizer
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(prefixes, return_tensors="pt", padding=True).to(chat_model.device)
    finally:
        tok.padding_side = old
    out = chat_model.model.generate(**enc, **generation_kwargs(tok, max_new_tokens))
    return [tok.decode(row, skip_special_tokens=True).strip() for row in out[:, enc["input_ids"].shape[1]:]]


def _generate(chat_model, name: str, meta: dict, records: list[Record], batch_size: int, max_new_tokens: int,
              progress) -> list[dict]:
    rows = []
    for rec in records:
        msgs = prompt_messages(name, meta, rec.data)
        if msgs is None:  # text-only creative: continue the first words, compare with the rest
            words = rec.data["text"].split()
            prefix = " ".join(words[:CREATIVE_PREFIX_WORDS])
            rows.append({"line": rec.line, "prefix": prefix, "reference": " ".join(words[CREATIVE_PREFIX_WORDS:])})
        else:
            rows.append({"line": rec.line, "messages": msgs, "reference": reference(name, rec.data)})
            if name == "tools":
                rows[-1]["tools"] = rec.data["tools"]
    order = sorted(range(len(rows)), key=lambda i: len(json.dumps(rows[i].get("messages") or rows[i]["prefix"])))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in progress(batches, f"generating ({name})"):
        items = [rows[i] for i in batch]
        if name == "tools":  # each record has tools of its own; its calls are read by the metric, from the text
            outs = [o.raw for o in chat_model.chat_batch([r["messages"] for r in items], max_new_tokens=max_new_tokens,
                                                         tools_each=[r["tools"] for r in items])]
        elif "messages" in items[0]:
            outs = chat_model.chat_batch([r["messages"] for r in items], max_new_tokens=max_new_tokens)
        else:
            outs = _continue_batch(chat_model, [r["prefix"] for r in items], max_new_tokens)
        for r, o in zip(items, outs):
            r["output"] = o
    return rows


def _no_progress(items, _desc):
    return items


def _rich_progress(items, desc):
    from rich.progress import track

    return track(items, description=desc, transient=True)


def evaluate_scenario(chat_model, name: str, meta: dict, records: list[Record], out_dir: str | Path | None = None,
                      batch_size: int = 8, max_new_tokens: int | None = None, max_seq_length: int = 1024,
                      progress: bool = False) -> dict:
    """The scenario's metrics for ``chat_model`` on ``records``; with ``out_dir``, writes scores.json and
    outputs.jsonl (every prompt, reference, output and per-record score) there."""
    sc = get(name)
    prog = _rich_progress if progress else _no_progress
    scores: dict = {"scenario": name, "records": len(records)}
    if sc.scored_by_loss:
        enc = [encode_example(chat_model.tokenizer, to_example(name, meta, r), max_seq_length) for r in records]
        ev = evaluate_encoded(chat_model.model, chat_model.tokenizer, enc, batch_size)
        scores["loss"] = ev["loss"]
        scores["perplexity"] = math.exp(ev["loss"]) if ev["loss"] < 50 else float("inf")
    rows: list[dict] = []
    if sc.generates:
        rows = _generate(chat_model, name, meta, records, batch_size, max_new_tokens or sc.max_new_tokens, prog)
        preds, refs = [r["output"] for r in rows], [r["reference"] for r in rows]
        if name == "classification":
            parsed = [M.parse_label(p, meta["labels"]) for p in preds]
            for r, p in zip(rows, parsed):
                r["parsed"] = p
                r["correct"] = p == r["reference"]
            scores |= M.classification_scores(parsed, refs, meta["labels"])
            lenient = [M.parse_label_lenient(p, meta["labels"]) for p in preds]
            scores["accuracy_lenient"] = sum(a == b for a, b in zip(lenient, refs)) / len(refs) if refs else 0.0
        elif name == "ner":
            pe = [M.parse_entities(p, meta["types"]) for p in preds]
            ge = [[tuple(e) for e in rec.data["entities"]] for rec in records]  # rows are in record order
            for r, p in zip(rows, pe):
                r["parsed"] = p
            scores |= M.entity_scores(pe, ge)
        elif name == "translation":
            scores |= M.translation_scores(preds, refs)
        elif name == "qa":
            for r in rows:
                r["token_f1"] = M.token_f1(r["output"], r["reference"])
            scores |= M.qa_scores(preds, refs)
        elif name == "chat":
            for r in rows:
                r["token_f1"] = M.token_f1(r["output"], r["reference"])
            scores["reply_f1"] = sum(r["token_f1"] for r in rows) / len(rows) if rows else 0.0
        elif name == "tools":
            refs_turns = [rec.data["messages"][-1] for rec in records]  # rows are in record order
            scores_t, detail = M.tool_scores(preds, refs_turns, [r["tools"] for r in rows])
            for r, d in zip(rows, detail):
                r.update(d)
                r.pop("tools")
            scores |= scores_t
        elif name == "creative":
            scores["distinct_1"] = M.distinct_n(preds, 1)
            scores["distinct_2"] = M.distinct_n(preds, 2)
            scores |= M.form_scores(preds, refs)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / SCORES_FILE).write_text(json.dumps(scores, indent=2))
        with (out / OUTPUTS_FILE).open("w") as fh:
            for r in sorted(rows, key=lambda r: r["line"]):
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return scores
