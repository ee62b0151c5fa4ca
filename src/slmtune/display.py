"""Terminal rendering of training events: one progress bar (step/total, loss, tokens/s, ETA) and log lines."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from slmtune.events import Event


class ConsoleSink:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self._last_eval_step = None

    def _ensure_bar(self, total: int, completed: int) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
                disable=not self.console.is_terminal and not _force_bar(),
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, completed=completed, loss="-", tps="-")

    def __call__(self, event: Event) -> None:
        d = event.data
        if event.type == "message":
            if "total_steps" in d and "step" in d:
                self._ensure_bar(d["total_steps"], d["step"])
            style = {"warn": "yellow", "error": "bold red"}.get(event.level, "dim")
            self.console.print(f"[{style}]{_escape(event.message)}[/]")
            if d.get("kind") == "done":
                self.close()
            return
        self._ensure_bar(d.get("total_steps", 0), 0)
        if d.get("train_loss") is not None:
            self.progress.update(
                self.task,
                completed=d["step"],
                loss=f"{d['train_loss']:.4f}",
                tps=f"{d.get('tokens_per_second', 0):.0f}",
            )
            if not self.console.is_terminal and d["step"] % 10 == 0:
                # A log file gets a line every 10 steps instead of a bar.
                score = (f"reward {d['train_reward_mean']:.3f}" if d.get("train_reward_mean") is not None
                         else f"acc {d.get('train_mean_token_accuracy') or 0:.3f}")
                self.console.print(f"step {d['step']}/{d['total_steps']} loss {d['train_loss']:.4f} {score} "
                                   f"{d.get('tokens_per_second', 0):.0f} tok/s")
        if d.get("valid_reward_mean") is not None:
            self.console.print(f"[cyan]eval step {d['step']}: valid_reward_mean {d['valid_reward_mean']:.4f}[/]")
        if d.get("valid_loss") is not None:
            acc = d.get("valid_mean_token_accuracy")
            self.console.print(
                f"[cyan]eval step {d['step']}: valid_loss {d['valid_loss']:.4f}"
                + (f", valid_mean_token_accuracy {acc:.3f}" if acc is not None else "")
                + "[/]"
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _force_bar() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
