"""Check a data file the way training will read it, and report statistics (``slmtune data validate``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from slmtune.data.formats import DataError, Example, Problem, Reading
from slmtune.data.sources import describe, read_source
from slmtune.data.tokenize import Encoded, TemplateError, encode_example


@dataclass
class Report:
    file: str
    problems: list[Problem] = field(default_factory=list)
    encoded: list[Encoded] = field(default_factory=list)
    examples: dict[int, Example] = field(default_factory=dict)  # line → parsed example, for every kept encoding
    n_truncated: int = 0
    n_dropped: int = 0  # truncate=True: examples whose trained tokens were all cut off, left out
    max_seq_length: int | None = None
    ignored: dict[str, int] = field(default_factory=dict)  # keys beyond the format's → records that had them
    formats: dict[str, int] = field(default_factory=dict)  # format → records written in it
    source: str = "JSONL"  # the layout it was read as (sources.describe)
    unit: str = "line"  # what its problems' numbers count (line, record, row)

    @property
    def ok(self) -> bool:
        return not self.problems

    def stats(self, epochs: float = 1.0) -> dict:
        lens = [e.n_tokens for e in self.encoded]
        trained = [e.n_trained for e in self.encoded]
        total = sum(lens)
        return {
            "examples": len(self.encoded),
            "tokens_total": total,
            "tokens_min": min(lens) if lens else 0,
            "tokens_mean": round(total / len(lens), 1) if lens else 0,
            "tokens_max": max(lens) if lens else 0,
            "trained_tokens": sum(trained),
            "would_be_truncated": self.n_truncated,
            "dropped_after_truncation": self.n_dropped,
            "max_seq_length": self.max_seq_length,
            "epochs": epochs,
            "billed_tokens": int(total * epochs),
            "formats": dict(self.formats),
            "ignored_keys": dict(self.ignored),
        }

    def ignored_note(self) -> str | None:
        """One line naming the keys read past (not part of the data format) and how many records had each."""
        return Reading(ignored=Counter(self.ignored)).ignored_note(self.file)


def check_file(path: str | Path, tokenizer=None, max_seq_length: int = 1024, truncate: bool = False, *,
               columns: dict | None = None, strict: bool = False) -> Report:
    """Read, check and (with a tokenizer) encode a data source (any layout :mod:`slmtune.data.sources` reads),
    collecting every problem. Over-long examples are problems unless ``truncate`` is set; counted either way."""
    reading = read_source(path, columns=columns, strict=strict)
    examples = reading.examples
    report = Report(file=str(path), problems=list(reading.problems), max_seq_length=max_seq_length,
                    ignored=dict(reading.ignored), formats=dict(reading.formats), source=describe(path), unit=reading.unit)
    if tokenizer is None:
        return report
    for ex in examples:
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
        report.encoded.append(enc)
        report.examples[ex.line] = ex
    report.problems.sort(key=lambda p: p.line)
    return report


def load_encoded(path: str | Path, tokenizer, max_seq_length: int, truncate: bool, *, columns: dict | None = None,
                 strict: bool = False) -> Report:
    """Like :func:`check_file` but raises :class:`DataError` listing every problem (used before training)."""
    report = check_file(path, tokenizer, max_seq_length, truncate, columns=columns, strict=strict)
    if report.problems:
        raise DataError(report.problems)
    return report
