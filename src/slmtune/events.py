"""One event stream for every consumer of a training run.

Training emits :class:`Event` objects (``message`` or ``metrics``) to a list of sinks. The CLI renders them as a
progress bar, the run directory keeps them as ``events.jsonl`` and ``metrics.csv``, and the service stores them
as ``fine_tuning.job.event`` rows. Metric names follow the OpenAI fine-tuning API where it has them.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# Columns of the OpenAI fine-tuning result file, in its order.
METRICS_CSV_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
                       "full_valid_loss", "full_valid_mean_token_accuracy"]


@dataclass
class Event:
    type: Literal["message", "metrics"]
    message: str
    level: Literal["info", "warn", "error"] = "info"
    data: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)


Sink = Callable[[Event], None]


def message(text: str, level: Literal["info", "warn", "error"] = "info", **data: Any) -> Event:
    return Event(type="message", message=text, level=level, data=data)


def metrics(text: str, **data: Any) -> Event:
    return Event(type="metrics", message=text, data=data)


class EventBus:
    """Fan an event out to sinks; a failing sink never stops training."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks: list[Sink] = list(sinks)
        self._reported: set[tuple] = set()

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink(event)
            except Exception as e:  # noqa: BLE001 - a display problem must not kill a run
                import sys

                key = (id(sink), type(e), str(e))
                if key not in self._reported:  # once per sink and error, not once per event (a full disk)
                    self._reported.add(key)
                    print(f"slmtune: event sink {sink!r} failed: {e} (repeats of this error are not shown)",
                          file=sys.stderr)

    __call__ = emit

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close:
                close()


class JsonlSink:
    """Appends every event to ``events.jsonl`` (one JSON object a line, flushed at once)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = self.path.open("a", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        self._fh.write(event.to_json() + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class MetricsCsvSink:
    """Writes ``metrics.csv`` with the OpenAI result-file columns, one row per step that has metrics.

    On resume the rows after the resumed step are dropped first, so the file never holds two histories.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        rows: list[dict] = []
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        self._fh = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._fh, fieldnames=METRICS_CSV_COLUMNS)
        self._writer.writeheader()
        for r in rows:
            self._writer.writerow(r)
        self._fh.flush()

    def __call__(self, event: Event) -> None:
        if event.type != "metrics" or "step" not in event.data:
            return
        d = event.data
        row = {
            "step": d["step"],
            "train_loss": _fmt(d.get("train_loss")),
            "train_accuracy": _fmt(d.get("train_mean_token_accuracy")),
            "valid_loss": _fmt(d.get("valid_loss")),
            "valid_mean_token_accuracy": _fmt(d.get("valid_mean_token_accuracy")),
            "full_valid_loss": _fmt(d.get("full_valid_loss")),
            "full_valid_mean_token_accuracy": _fmt(d.get("full_valid_mean_token_accuracy")),
        }
        self._writer.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _fmt(v: Any) -> str:
    return "" if v is None else f"{float(v):.6g}"


def read_events(path: str | Path) -> list[Event]:
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(Event(**json.loads(line)))
    return out
