"""Engine events → job events and checkpoint rows, written from the training child (fenced by the claim's token)."""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from sqlalchemy import select, update

from slmtune.service import jobs as J
from slmtune.service.db import CheckpointRow, Database, JobRow, new_id
from slmtune.service.queue import DB_DOWN, LeaseLost, fence, retrying
from slmtune.service.states import ExitCode

log = logging.getLogger("slmtune.worker")


class DBSink:
    """Writes engine events as job events and checkpoint rows (in the training child process).

    Every write first checks the claim's fencing token (``fence``): once another worker holds the job this child
    exits without writing. While the database is unreachable, events wait in order in memory and a thread writes
    them (with their original times) when it answers again; training is never held up. ``close()`` waits for them.
    """

    SKIP = ("The job has successfully completed", "Training for ")

    def __init__(self, db: Database, job_id: str, token: int, ft_name: str):
        self.db, self.job_id, self.token, self.ft_name = db, job_id, token, ft_name
        self.last_metrics: dict = {}
        self._first: tuple[float, int] | None = None  # (time, step) of the first metrics seen, for the ETA
        self._pending: collections.deque = collections.deque()
        self._lock = threading.Lock()  # guards _pending and _flusher
        self._writing = threading.Lock()  # one writer at a time, so events land in order
        self._flusher: threading.Thread | None = None

    def __call__(self, event) -> None:
        with self._lock:
            self._pending.append(event)
            if self._flusher is not None:  # the database is away: the flusher writes it with the rest
                return
        try:
            self._flush()
        except DB_DOWN:
            with self._lock:
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._retry, name="event-flusher", daemon=True)
                    self._flusher.start()

    def close(self, max_wait: float = 600.0) -> None:
        """Write what is still buffered; retries while the database is away (at most ``max_wait`` s)."""
        flusher = self._flusher
        if flusher is not None:
            flusher.join(max_wait)
        retrying(self._flush, what="database (buffered events)", max_wait=max_wait)

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def _retry(self) -> None:
        delay = 0.5
        while True:
            try:
                self._flush()
            except DB_DOWN:
                log.warning("%d event(s) of %s buffered: database unreachable", len(self._pending), self.job_id)
                time.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            with self._lock:
                if not self._pending:
                    self._flusher = None
                    return

    def _flush(self) -> None:
        with self._writing:
            while self._pending:
                event = self._pending[0]
                try:
                    with self.db.session() as s:
                        fence(s, self.job_id, self.token)
                        self._write(s, event)
                except LeaseLost:
                    log.warning("job %s is another worker's now: stopping this training", self.job_id)
                    os._exit(ExitCode.LEASE_LOST)
                self._pending.popleft()

    def _write(self, s, event) -> None:
        d, at = event.data, int(event.created_at)
        if event.type == "metrics":
            keep = ("step", "total_steps", "train_loss", "train_mean_token_accuracy", "valid_loss",
                    "valid_mean_token_accuracy", "learning_rate", "tokens_per_second",
                    # reinforcement: OpenAI's reward names, the reward's spread, completion length, a few samples
                    "train_reward_mean", "train_reward_std", "valid_reward_mean", "valid_reward_std",
                    "train_completion_length", "samples")
            data = {k: d[k] for k in keep if d.get(k) is not None}
            self.last_metrics = data
            part = "t" if "train_loss" in data else "v"  # a final evaluation may follow its step's event
            J.add_event(s, self.job_id, event.message, type="metrics", data=data, key=f"metrics:{d['step']}:{part}",
                        created_at=at)
            step, total = d.get("step"), d.get("total_steps")
            if self._first is None:
                self._first = (event.created_at, step)
            elif total and step > self._first[1]:
                per_step = (event.created_at - self._first[0]) / (step - self._first[1])
                s.execute(update(JobRow).where(JobRow.id == self.job_id)
                          .values(estimated_finish=int(event.created_at + per_step * (total - step))))
            return
        if d.get("kind") == "checkpoint":
            step = d["step"]
            # OpenAI's checkpoint metrics as the engine wrote them (older runs: the last step's metrics)
            metrics = d.get("metrics") or {k: v for k, v in self.last_metrics.items()
                                           if k not in ("total_steps", "learning_rate", "tokens_per_second", "samples")}
            exists = s.scalar(select(CheckpointRow).where(CheckpointRow.job_id == self.job_id,
                                                          CheckpointRow.step_number == step))
            if exists is None:
                s.add(CheckpointRow(id=new_id("ftckpt_"), job_id=self.job_id, created_at=at, step_number=step,
                                    metrics=metrics, path=d["checkpoint"],
                                    fine_tuned_model_checkpoint=f"{self.ft_name}:ckpt-step-{step}"))
            # the engine rotates old checkpoints: forget the ones whose folder is gone
            for row in s.scalars(select(CheckpointRow).where(CheckpointRow.job_id == self.job_id)):
                if row.step_number != step and not Path(row.path).exists():
                    s.delete(row)
            J.add_event(s, self.job_id, f"Checkpoint created at step {step}", key=f"checkpoint:{step}",
                        created_at=at)
            return
        if event.message.startswith(self.SKIP):
            return
        key = None
        if event.level == "info" and not event.message.startswith("Resuming"):
            key = "m:" + hashlib.sha1(event.message.encode()).hexdigest()[:20]
        # which step the model is, and why training stopped: the console marks the kept checkpoint from it
        data = {k: d[k] for k in ("kind", "step", "best_step", "metric", "best_value") if k in d} \
            if d.get("kind") in ("kept", "early_stop") else {}
        J.add_event(s, self.job_id, event.message, level=event.level, data=data, key=key, created_at=at)
