"""The eight scenarios: how a record becomes a training example, and what is measured on held-out records.

A scenario's *meta* (the label set for classification, the entity types for NER) comes from the training records
and is saved with the run (``scenario.json``), so evaluation prompts the tuned and the base model with exactly the
prompts the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from slmtune.config import SCENARIO_NAMES
from slmtune.data.formats import Example
from slmtune.data.tools import call_text
from slmtune.scenarios.records import Record

LANGUAGES = {"de": "German", "en": "English", "fr": "French", "es": "Spanish", "it": "Italian", "nl": "Dutch",
             "pt": "Portuguese", "pl": "Polish", "ru": "Russian", "sv": "Swedish", "zh": "Chinese", "ja": "Japanese"}
CREATIVE_PREFIX_WORDS = 8  # {"text"}-only creative records are continued from their first words


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    record: str
    metrics: tuple[str, ...]
    headline: str  # the metric the before/after target is stated on
    better: str  # "higher" | "lower"
    max_new_tokens: int = 64
    scored_by_loss: bool = False  # loss and perplexity of the reference text on held-out records
    generates: bool = True  # held-out prompts are answered and the answers scored

    @property
    def scored(self) -> tuple[str, ...]:
        """The metrics measured by generation: what train.early_stopping.metric may name beyond the losses."""
        return tuple(m for m in self.metrics if m not in ("loss", "perplexity")) if self.generates else ()


LOWER_IS_BETTER = frozenset({"loss", "perplexity", "unparseable"})  # every other scenario metric: higher is better


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("domain", "continued pre-training on raw text", '{"text"} or .txt', ("perplexity", "loss"),
             "perplexity", "lower", scored_by_loss=True, generates=False),
    Scenario("classification", "text → one label from the data's label set", '{"text", "label"}',
             ("accuracy", "macro_f1", "accuracy_lenient", "unparseable"), "accuracy", "higher", max_new_tokens=12),
    Scenario("ner", "text → its named entities as 'TYPE: mention' lines",
             '{"tokens", "tags"} (BIO), {"text", "entities"}, or CoNLL', ("f1", "precision", "recall"), "f1",
             "higher", max_new_tokens=96),
    Scenario("translation", "source sentence → target language", '{"src", "tgt", "src_lang", "tgt_lang"}',
             ("chrf", "bleu"), "chrf", "higher", max_new_tokens=64),
    Scenario("qa", "context + question → short answer", '{"context", "question", "answer"}',
             ("token_f1", "exact_match"), "token_f1", "higher", max_new_tokens=64),
    Scenario("chat", "conversations (OpenAI messages)", '{"messages"}',
             ("loss", "perplexity", "reply_f1"), "loss", "lower", max_new_tokens=96, scored_by_loss=True),
    Scenario("creative", "prompt → text (poems, songs, jokes)", '{"prompt", "text"} or {"text"}',
             ("perplexity", "distinct_1", "distinct_2", "length_ratio_median", "line_format_match"), "perplexity",
             "lower", max_new_tokens=160, scored_by_loss=True),
    Scenario("tools", "request + function definitions → the right call (or a reply when none fits)",
             '{"tools", "messages"} (OpenAI tool-calling chat; the last message is the reference turn)',
             ("name_accuracy", "exact_arguments", "call_accuracy", "valid_json", "schema_valid"), "name_accuracy",
             "higher", max_new_tokens=128),
]}
if tuple(SCENARIOS) != SCENARIO_NAMES:
    raise RuntimeError("config.ScenarioName and scenarios.catalog must name the same scenarios, in the same order")


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None


def build_meta(name: str, records: list[Record]) -> dict:
    """What the prompts need from the training data: the sorted label set, or the entity types."""
    if name == "classification":
        return {"labels": sorted({r.data["label"] for r in records})}
    if name == "ner":
        return {"types": sorted({t for r in records for t, _ in r.data["entities"]})}
    return {}


def _system(name: str, meta: dict, rec: dict) -> str | None:
    if name == "classification":
        return "Classify the text. Answer with exactly one of these labels and nothing else: " + \
            ", ".join(meta["labels"]) + "."
    if name == "ner":
        return ("Find the named entities in the text. Answer with one line per entity, 'TYPE: mention', in order of "
                f"appearance, using the types {', '.join(meta['types'])}; answer 'none' if there are none.")
    if name == "translation":
        src = LANGUAGES.get(rec["src_lang"], rec["src_lang"])
        tgt = LANGUAGES.get(rec["tgt_lang"], rec["tgt_lang"])
        return f"Translate the {src} text into {tgt}. Answer with the translation only."
    if name == "qa":
        return "Answer the question from the context with a short answer (a few words), nothing else."
    return None


def prompt_messages(name: str, meta: dict, rec: dict) -> list[dict] | None:
    """The conversation up to the model's turn (None for raw-text records, which are continued, not answered)."""
    if name in ("chat", "tools"):
        return rec["messages"][:-1]
    if name == "domain" or (name == "creative" and "prompt" not in rec):
        return None
    user = {"classification": lambda: rec["text"], "ner": lambda: rec["text"], "translation": lambda: rec["src"],
            "qa": lambda: f"Context: {rec['context']}\n\nQuestion: {rec['question']}",
            "creative": lambda: rec["prompt"]}[name]()
    system = _system(name, meta, rec)
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def reference(name: str, rec: dict) -> str:
    """The answer a record expects from the model."""
    if name == "classification":
        return rec["label"]
    if name == "ner":
        return "\n".join(f"{t}: {m}" for t, m in rec["entities"]) or "none"
    if name == "translation":
        return rec["tgt"]
    if name == "qa":
        return rec["answer"]
    if name == "chat":
        return rec["messages"][-1]["content"]
    if name == "tools":  # the reference turn: its calls, or its text
        last = rec["messages"][-1]
        return call_text(last["tool_calls"]) if last.get("tool_calls") else last["content"]
    return rec["text"]


def to_example(name: str, meta: dict, record: Record) -> Example:
    """The training example for a record: a chat turn, or raw text trained on every token."""
    rec = record.data
    msgs = prompt_messages(name, meta, rec)
    if msgs is None:
        return Example(record.line, "completion", prompt="", completion=rec["text"])
    if name in ("chat", "tools"):
        return Example(record.line, "chat", messages=rec["messages"], tools=rec.get("tools"))
    return Example(record.line, "chat", messages=[*msgs, {"role": "assistant", "content": reference(name, rec)}])
