"""Check a data file the way training will read it, and report statistics (``slmtune data validate``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from slmtune.data.formats import DataError, Example, Problem, Reading
from slmtune.data.sources import describe, stream_source
from slmtune.data.tokenize import Encoded, TemplateError, encode_example


@dataclass
class Report:
    file: str
    problems: list[Problem] = field(default_factory=list)
    encoded: list[Encoded] = field(default_factory=list)  # every kept encoding (all, or the first ``keep``)
    examples: dict[int, Example] = field(default_factory=dict)  # line → parsed example, for every kept encoding
    n_truncated: int = 0
    n_dropped: int = 0  # truncate=True: examples whose trained tokens were all cut off, left out
    max_seq_length: int | None = None
    ignored: dict[str, int] = field(default_factory=dict)  # keys beyond the format's → records that had them
    formats: dict[str, int] = field(default_factory=dict)  # format → records written in it
    source: str = "JSONL"  # the layout it was read as (sources.describe)
    unit: str = "line"  # what its problems' numbers count (line, record, row)
    kind: tuple[str, int] | None = None  # (kind, number) of the first record: what the file holds
    complete: bool = True  # False: the check stopped at ``limit`` examples (the rest was not read)
    # token counts of every encoded example, kept or not
    n_examples: int = 0
    tokens_total: int = 0
    tokens_min: int = 0
    tokens_max: int = 0
    trained_total: int = 0
    encoded_formats: Counter = field(default_factory=Counter)  # format → valid (encoded) examples written in it
    warnings: list[Problem] = field(default_factory=list)  # kept examples' doubtful parts (tool arguments off schema)

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, enc: Encoded) -> None:
        self.tokens_min = min(self.tokens_min, enc.n_tokens) if self.n_examples else enc.n_tokens
        self.tokens_max = max(self.tokens_max, enc.n_tokens)
        self.n_examples += 1
        self.tokens_total += enc.n_tokens
        self.trained_total += enc.n_trained

    def stats(self, epochs: float = 1.0) -> dict:
        n, total = self.n_examples, self.tokens_total
        return {
            "examples": n,
            "tokens_total": total,
            "tokens_min": self.tokens_min,
            "tokens_mean": round(total / n, 1) if n else 0,
            "tokens_max": self.tokens_max,
            "trained_tokens": self.trained_total,
            "would_be_truncated": self.n_truncated,
            "dropped_after_truncation": self.n_dropped,
            "max_seq_length": self.max_seq_length,
            "epochs": epochs,
            "billed_tokens": int(total * epochs),
            "formats": dict(self.formats),
            "ignored_keys": dict(self.ignored),
            "warnings": len(self.warnings),
            **({} if self.complete else {"complete": False}),
        }

    def ignored_note(self) -> str | None:
        """One line naming the keys read past (not part of the data format) and how many records had each."""
        return Reading(ignored=Counter(self.ignored)).ignored_note(self.file)

    def notes(self) -> list[str]:
        """Warnings for the user, one line each: keys read past, and tool calls whose arguments do not match their
        function's schema (counted, the first few named; data.strict makes them problems)."""
        out = [n] if (n := self.ignored_note()) else []
        if self.warnings:
            shown = "; ".join(str(w) for w in self.warnings[:3])
            more = f" (and {len(self.warnings) - 3} more)" if len(self.warnings) > 3 else ""
            out.append(f"{len(self.warnings)} tool call(s) with arguments off their function's schema: {shown}{more} "
                       "(data.strict: true makes them errors)")
        return out


def check_file(path: str | Path, tokenizer=None, max_seq_length: int = 1024, truncate: bool = False, *,
               columns: dict | None = None, strict: bool = False, keep: int | None = None,
               limit: int | None = None) -> Report:
    """Read, check and (with a tokenizer) encode a data source (any layout :mod:`slmtune.data.sources` reads),
    collecting every problem. Over-long examples are problems unless ``truncate`` is set; counted either way.

    The source is streamed: ``keep`` bounds the encodings (and examples) held for the caller — ``None`` keeps all,
    as training needs; a check keeps a preview's worth and counts the rest — and ``limit`` stops after that many
    examples (``complete`` is then False). Memory is then bounded whatever the file's size."""
    reading, examples = stream_source(path, columns=columns, strict=strict)
    report = Report(file=str(path), max_seq_length=max_seq_length, source=describe(path), unit=reading.unit)
    for ex in examples:
        if limit is not None and report.n_examples + report.n_dropped >= limit:
            report.complete = False
            break
        if tokenizer is None:  # the records' checks only: counted, not encoded
            report.n_examples += 1
            continue
        try:
            enc = encode_example(tokenizer, ex)
        except TemplateError as e:
            report.problems.append(Problem(str(path), ex.line, "messages", str(e), report.unit))
            continue
        if enc.n_tokens > max_seq_length:
            report.n_truncated += 1
            if not truncate:
                report.problems.append(
                    Problem(
                        str(path), ex.line, "messages" if ex.kind == "chat" else "completion",
                        f"too long after tokenization: {enc.n_tokens} tokens > max_seq_length {max_seq_length} "
                        "(raise data.max_seq_length or set data.truncate: true)", report.unit,
                    )
                )
            enc = Encoded(enc.input_ids[:max_seq_length], enc.labels[:max_seq_length], enc.line, True)
            if truncate and enc.n_trained == 0:
                report.n_dropped += 1  # nothing left to learn from: leave it out (counted, reported)
                continue
        report.count(enc)
        report.encoded_formats[ex.fmt or ex.kind] += 1
        if keep is None or len(report.encoded) < keep:
            report.encoded.append(enc)
            report.examples[ex.line] = ex
    report.problems = sorted(reading.problems + report.problems, key=lambda p: p.line)
    report.ignored, report.formats, report.kind = dict(reading.ignored), dict(reading.formats), reading.first_kind
    report.warnings = list(reading.warnings)
    return report


def load_encoded(path: str | Path, tokenizer, max_seq_length: int, truncate: bool, *, columns: dict | None = None,
                 strict: bool = False) -> Report:
    """Like :func:`check_file` but raises :class:`DataError` listing every problem (used before training)."""
    report = check_file(path, tokenizer, max_seq_length, truncate, columns=columns, strict=strict)
    if report.problems:
        raise DataError(report.problems)
    return report
