"""The job worker: claims jobs from the database, validates their files, and trains each in a child process.

* Claiming is a compare-and-set ``UPDATE … WHERE id = ? AND status = ? AND lease expired``: exactly one worker wins,
  on SQLite and PostgreSQL alike, with no lock held while training.
* The worker renews a lease every second while the child trains. A job whose lease ran out (its worker died) is
  claimed again and resumes from its newest checkpoint; events carry dedupe keys so nothing is stored twice.
* Training runs in a spawned child process (``slmtune.train``, the same engine as the CLI), so a crash, an
  out-of-memory kill or a cancel never takes the worker or the API down. The child dies with its worker
  (PR_SET_PDEATHSIG), so a killed worker leaves no orphan writing to the job.
* Cancel kills the child at once; pause sends it SIGINT, which makes the engine save a checkpoint and stop.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from sqlalchemy import and_, or_, select, update

from slmtune.service import jobs as J
from slmtune.service.db import CheckpointRow, Database, JobRow, new_id, now
from slmtune.service.files import store_file
from slmtune.service.settings import Settings

log = logging.getLogger("slmtune.worker")

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 3
MAX_ATTEMPTS = 5


class Worker:
    def __init__(self, settings: Settings, db: Database | None = None, worker_id: str | None = None,
                 poll_seconds: float = 0.5):
        self.settings = settings
        self.db = db or Database(settings.db_url)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id('', 6)}"
        self.poll_seconds = poll_seconds
        self.stop = threading.Event()
        self.child: mp.Process | None = None

    # --- loop -----------------------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("worker %s started", self.id)
        while not self.stop.is_set():
            job_id = None
            try:
                job_id = self.claim()
                if job_id:
                    self.process(job_id)
            except Exception:  # noqa: BLE001 - a worker survives any one job
                log.exception("worker %s: error while processing %s", self.id, job_id)
                if job_id:
                    self._release(job_id)
            if not job_id:
                self.stop.wait(self.poll_seconds)
        self._kill_child()

    def shutdown(self) -> None:
        self.stop.set()
        self._kill_child()

    def _kill_child(self) -> None:
        if self.child is not None and self.child.is_alive():
            self.child.kill()
            self.child.join(5)

    def claim(self) -> str | None:
        t = time.time()
        expired = or_(JobRow.lease_until.is_(None), JobRow.lease_until < t)
        with self.db.session() as s:
            candidates = s.execute(
                select(JobRow.id, JobRow.status).where(
                    or_(JobRow.status.in_(("validating_files", "queued")), JobRow.status == "running"), expired,
                ).order_by(JobRow.seq).limit(10)
            ).all()
        for job_id, status in candidates:
            with self.db.session() as s:
                res = s.execute(
                    update(JobRow)
                    .where(and_(JobRow.id == job_id, JobRow.status == status,
                                or_(JobRow.lease_until.is_(None), JobRow.lease_until < t)))
                    .values(worker_id=self.id, lease_until=t + self.settings.lease_seconds,
                            attempts=JobRow.attempts + 1)
                )
                if res.rowcount == 1:
                    return job_id
        return None

    def _renew(self, job_id: str) -> JobRow | None:
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.worker_id == self.id)
                      .values(lease_until=time.time() + self.settings.lease_seconds))
            return s.scalar(select(JobRow).where(JobRow.id == job_id))

    def _release(self, job_id: str) -> None:
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.worker_id == self.id)
                      .values(lease_until=None, worker_id=None))

    # --- one job --------------------------------------------------------------------------------------------------
    def process(self, job_id: str) -> None:
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if job.attempts > MAX_ATTEMPTS:
                self._fail(s, job, "worker_failed", f"The job was started {job.attempts - 1} times without "
                           "finishing; giving up.", None)
                return
            run_dir = Path(job.run_dir or self.settings.runs_dir / job.id)
            job.run_dir = str(run_dir)
            status = job.status
        if status == "validating_files":
            if not self.validate(job_id, run_dir):
                return
        self.train(job_id, run_dir)

    def validate(self, job_id: str, run_dir: Path) -> bool:
        from slmtune.data.validate import check_file
        from slmtune.models.loading import load_tokenizer
        from slmtune.models.registry import resolve

        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            train_f, val_f = J.files_of(s, job)
            msg = f"Validating training file: {job.training_file}"
            if job.validation_file:
                msg += f" and validation file: {job.validation_file}"
            J.add_event(s, job.id, msg, key="validating")
            data_dir = run_dir / "data"
            data_dir.mkdir(parents=True, exist_ok=True)
            missing = [(p, f) for p, f in (("training_file", train_f), ("validation_file", val_f))
                       if (p == "training_file" or job.validation_file) and (f is None or f.deleted)]
            if missing:
                self._fail(s, job, "invalid_file", f"The {missing[0][0].replace('_', ' ')} was deleted before "
                           "the job started.", missing[0][0])
                return False
            # The job keeps its own copy: deleting the upload later does not break a resume.
            shutil.copyfile(train_f.path, data_dir / "train.jsonl")
            if val_f is not None:
                shutil.copyfile(val_f.path, data_dir / "validation.jsonl")
            model = job.model
        tokenizer = load_tokenizer(resolve(model))
        for param, name in (("training_file", "train.jsonl"), ("validation_file", "validation.jsonl")):
            path = data_dir / name
            if not path.exists():
                continue
            rep = check_file(path, tokenizer, max_seq_length=1024)
            with self.db.session() as s:
                job = s.scalar(select(JobRow).where(JobRow.id == job_id))
                if job.status == "cancelled":
                    return False
                if not rep.problems:
                    from slmtune.data.formats import Problem

                    want = "preference" if job.method["type"] == "dpo" else None
                    for ex in rep.examples.values():
                        if (want and ex.kind != want) or (not want and ex.kind == "preference"):
                            rep.problems.append(Problem(str(path), ex.line, "(root)", (
                                f"{ex.kind} format, but method {job.method['type']} needs "
                                + ("preference records (input, preferred_output, non_preferred_output)" if want
                                   else "chat or prompt/completion records"))))
                            break
                if rep.problems:
                    p = rep.problems[0]
                    more = f" ({len(rep.problems) - 1} more problem(s) in the file)" if len(rep.problems) > 1 else ""
                    kind = param.replace("_", " ")
                    self._fail(s, job, f"invalid_{param}", f"The job failed due to an invalid {kind}. "
                               f"Example {p.line}: {p.path}: {p.message}{more}", param)
                    return False
                n = rep.stats()["examples"]
                if param == "training_file" and n < self.settings.min_examples:
                    self._fail(s, job, "invalid_n_examples", f"Training file has {n} example(s), but must have at "
                               f"least {self.settings.min_examples} examples", "training_file")
                    return False
                if param == "training_file" and n > self.settings.max_examples:
                    self._fail(s, job, "invalid_n_examples", f"Training file has {n} examples; the limit is "
                               f"{self.settings.max_examples}", "training_file")
                    return False
                if param == "training_file":
                    stats = rep.stats()
                    job.method = _with_hyper(job.method, J.resolve_hyperparameters(_hyper(job.method), n))
                    (run_dir / "data" / "tokens").write_text(str(stats["tokens_total"]))
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if job.status != "validating_files":
                return False
            job.status = "queued"
            J.add_event(s, job.id, "Files validated, moving job to queued state", key="validated")
        return True

    def train(self, job_id: str, run_dir: Path) -> None:
        from slmtune.artifacts import list_checkpoints

        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if job.status not in ("queued", "running"):
                return
            job.status = "running"
            job.pause_requested = False
            hp = _hyper(job.method)
            cfg = {
                "model": {"name": job.model},
                "data": {"train": str(run_dir / "data" / "train.jsonl"),
                         "validation": str(run_dir / "data" / "validation.jsonl") if job.validation_file else None},
                "method": {"name": "lora"},
                "train": {"epochs": hp["n_epochs"], "batch_size": hp["batch_size"],
                          "learning_rate": J.BASE_LR * hp["learning_rate_multiplier"], "seed": job.seed % (2**31),
                          "save_total_limit": 3,
                          **({"objective": "dpo", "dpo_beta": hp["beta"]} if job.method["type"] == "dpo" else {})},
                "run": {"output": str(run_dir / "run")},
            }
            if self.settings.job_nproc > 1:  # the job's batch size is global: split it over the processes
                from slmtune.training.distributed import free_port

                n = self.settings.job_nproc
                cfg["train"]["batch_size"] = max(1, -(-hp["batch_size"] // n))
                cfg["distributed"] = {"strategy": "ddp", "nproc": n, "master_port": free_port()}
            resume = bool(list_checkpoints(run_dir / "run"))
            if (run_dir / "run").exists() and not resume:
                shutil.rmtree(run_dir / "run")  # a previous attempt died before its first checkpoint
            J.add_event(s, job.id, "Fine-tuning job started", key="started")
            ft_name = J.fine_tuned_model_name(job)
        ctx = mp.get_context("spawn")
        self.child = ctx.Process(target=_child_main, args=(self.settings.db_url, job_id, ft_name, cfg, resume,
                                                             os.getpid()), daemon=True)
        self.child.start()
        interrupted_for_pause = False
        while self.child.is_alive():
            self.child.join(1.0)
            job = self._renew(job_id)
            if job is None or job.status == "cancelled":
                self._kill_child()
                break
            if job.pause_requested and not interrupted_for_pause and self.child.is_alive():
                os.kill(self.child.pid, signal.SIGINT)
                interrupted_for_pause = True
        code = self.child.exitcode
        self.child = None
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if job.status == "cancelled":
                job.lease_until, job.worker_id = None, None
                return
            if code == EXIT_OK:
                self._succeed(s, job, run_dir, ft_name)
            elif code == EXIT_INTERRUPTED and job.pause_requested:
                job.status = "paused"
                job.pause_requested = False
                job.lease_until, job.worker_id = None, None
                ckpts = list_checkpoints(run_dir / "run")
                at = f" at step {ckpts[-1][0]}" if ckpts else ""
                J.add_event(s, job.id, f"Job paused{at}; resume continues from this checkpoint")
            else:
                err = _last_error(s, job.id) or f"training process exited with code {code}"
                self._fail(s, job, "training_failed", f"Fine-tuning failed: {err}", None)

    # --- endings ----------------------------------------------------------------------------------------------------
    def _succeed(self, s, job: JobRow, run_dir: Path, ft_name: str) -> None:
        hp = _hyper(job.method)
        tokens_file = run_dir / "data" / "tokens"
        tokens = int(tokens_file.read_text()) if tokens_file.exists() else 0
        metrics_csv = (run_dir / "run" / "metrics.csv").read_bytes()
        # OpenAI serves the result file base64-encoded; clients decode it with base64.b64decode (spec §5).
        result = store_file(session=s, settings=self.settings, project=job.project_id, filename="step_metrics.csv",
                            purpose="fine-tune-results", content=base64.b64encode(metrics_csv))
        job.result_files = [result.id]
        job.trained_tokens = tokens * int(hp["n_epochs"])
        job.fine_tuned_model = ft_name
        job.finished_at = now()
        job.status = "succeeded"
        job.lease_until, job.worker_id = None, None
        J.add_event(s, job.id, f"New fine-tuned model created: {ft_name}", key="model-created")
        J.add_event(s, job.id, "The job has successfully completed", key="succeeded")

    def _fail(self, s, job: JobRow, code: str, message: str, param: str | None) -> None:
        job.status = "failed"
        job.error = {"code": code, "message": message, "param": param}
        job.finished_at = now()
        job.lease_until, job.worker_id = None, None
        J.add_event(s, job.id, message, level="error", key="failed")


def _hyper(method: dict) -> dict:
    return dict(method[method["type"]]["hyperparameters"])


def _with_hyper(method: dict, hp: dict) -> dict:
    return {**method, method["type"]: {**method.get(method["type"], {}), "hyperparameters": hp}}


def _last_error(s, job_id: str) -> str | None:
    from slmtune.service.db import EventRow

    row = s.scalar(select(EventRow).where(EventRow.job_id == job_id, EventRow.level == "error")
                   .order_by(EventRow.seq.desc()).limit(1))
    return row.message if row else None


# --- the child process -------------------------------------------------------------------------------------------
class DBSink:
    """Writes engine events as job events and checkpoint rows (in the training child process)."""

    SKIP = ("The job has successfully completed", "Training for ")

    def __init__(self, db: Database, job_id: str, ft_name: str):
        self.db, self.job_id, self.ft_name = db, job_id, ft_name
        self.last_metrics: dict = {}
        self._first: tuple[float, int] | None = None  # (time, step) of the first metrics seen, for the ETA

    def __call__(self, event) -> None:
        d = event.data
        with self.db.session() as s:
            if event.type == "metrics":
                keep = ("step", "total_steps", "train_loss", "train_mean_token_accuracy", "valid_loss",
                        "valid_mean_token_accuracy", "learning_rate", "tokens_per_second")
                data = {k: d[k] for k in keep if d.get(k) is not None}
                self.last_metrics = data
                part = "t" if "train_loss" in data else "v"  # a final evaluation may follow its step's event
                J.add_event(s, self.job_id, event.message, type="metrics", data=data, key=f"metrics:{d['step']}:{part}")
                step, total = d.get("step"), d.get("total_steps")
                if self._first is None:
                    self._first = (time.time(), step)
                elif total and step > self._first[1]:
                    per_step = (time.time() - self._first[0]) / (step - self._first[1])
                    job = s.scalar(select(JobRow).where(JobRow.id == self.job_id))
                    job.estimated_finish = int(time.time() + per_step * (total - step))
                return
            if d.get("kind") == "checkpoint":
                step = d["step"]
                metrics = {k: v for k, v in self.last_metrics.items() if k not in ("total_steps", "learning_rate",
                                                                                   "tokens_per_second")}
                exists = s.scalar(select(CheckpointRow).where(CheckpointRow.job_id == self.job_id,
                                                              CheckpointRow.step_number == step))
                if exists is None:
                    s.add(CheckpointRow(id=new_id("ftckpt_"), job_id=self.job_id, created_at=now(), step_number=step,
                                        metrics=metrics, path=d["checkpoint"],
                                        fine_tuned_model_checkpoint=f"{self.ft_name}:ckpt-step-{step}"))
                # the engine rotates old checkpoints: forget the ones whose folder is gone
                for row in s.scalars(select(CheckpointRow).where(CheckpointRow.job_id == self.job_id)):
                    if row.step_number != step and not Path(row.path).exists():
                        s.delete(row)
                J.add_event(s, self.job_id, f"Checkpoint created at step {step}", key=f"checkpoint:{step}")
                return
            if event.message.startswith(self.SKIP):
                return
            key = None
            if event.level == "info" and not event.message.startswith("Resuming"):
                key = "m:" + hashlib.sha1(event.message.encode()).hexdigest()[:20]
            J.add_event(s, self.job_id, event.message, level=event.level, data={}, key=key)


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(EXIT_FAILED)


def _child_main(db_url: str, job_id: str, ft_name: str, cfg: dict, resume: bool, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    from slmtune.training.run import train

    db = Database(db_url)
    sink = DBSink(db, job_id, ft_name)
    try:
        result = train(cfg, resume=resume, sinks=[sink])
    except KeyboardInterrupt:
        os._exit(EXIT_INTERRUPTED)
    except BaseException:  # noqa: BLE001 - the engine already emitted the error as an event
        os._exit(EXIT_FAILED)
    os._exit(EXIT_OK if result.status == "succeeded" else EXIT_INTERRUPTED)


def start_worker_threads(settings: Settings, db: Database, n: int) -> list[Worker]:
    workers = []
    for _ in range(n):
        w = Worker(settings, db)
        threading.Thread(target=w.run_forever, name=f"slmtune-worker-{w.id}", daemon=True).start()
        workers.append(w)
    return workers


__all__ = ["DBSink", "Worker", "start_worker_threads"]
