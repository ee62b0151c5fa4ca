"""The job worker: claims jobs from the database, validates their files, and trains each in a child process.

* **Claims** are a compare-and-set ``UPDATE … WHERE id = ? AND status = ? AND lease expired``: exactly one worker
  wins, on SQLite and PostgreSQL alike, with no lock held while training. Each claim bumps ``jobs.claims``; that
  number is the claim's **fencing token**: every later write of the worker and of its training child carries
  ``WHERE claims = token``, so a worker whose job was taken over writes nothing more.
* **Leases** run on the database's clock (``Database.clock``) and are renewed by a heartbeat thread from the claim
  on, through validation and training. A renewal that finds the token gone means the lease was lost: the worker
  kills its child's whole process group (torchrun and its ranks included) and leaves the job alone.
* **Status changes** are compare-and-set too (``UPDATE … WHERE status = expected``): a cancel that lands while the
  worker finishes is either refused (the job had succeeded) or wins (the worker's success write finds no row).
* **Restarts**: ``shutdown()`` (SIGTERM to ``slmtune worker`` or ``slmtune serve``) asks the child to save a
  checkpoint (SIGINT), then hands the job back to the queue without counting an attempt; another worker resumes it.
* **Database outages**: the heartbeat and the status checks retry with backoff while training goes on; the child
  buffers its events and writes them, in order, when the database answers again.
* Training runs where the executor puts it (``executors.RunHandle``): by default a spawned child process
  (``runner.LocalRun``: the same engine as the CLI), so a crash, an out-of-memory kill or a cancel never takes the
  worker or the API down. The child dies with its worker (PR_SET_PDEATHSIG), so a killed worker leaves no orphan
  writing to the job.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from sqlalchemy import select, update

from slmtune.artifacts import list_checkpoints
from slmtune.data.formats import Problem, objective_mismatch
from slmtune.data.validate import check_file
from slmtune.graders.grade import read_graded_prompts
from slmtune.graders.spec import parse_grader
from slmtune.models.loading import load_tokenizer
from slmtune.models.registry import resolve
from slmtune.paths import private_dir, private_file
from slmtune.scenarios.records import read_records
from slmtune.service import jobs as J
from slmtune.service.db import Database, EventRow, JobRow, new_id, now
from slmtune.service.executors import RunHandle, make_executor
from slmtune.service.files import store_file
from slmtune.service.queue import (
    DB_DOWN,
    MAX_ATTEMPTS,
    JobRefused,
    Lease,
    LeaseLost,
    claim,
    fence,
    release,
    retrying,
    set_status,
)
from slmtune.service.settings import Settings
from slmtune.service.states import ExitCode, JobStatus
from slmtune.training.distributed import free_port

log = logging.getLogger("slmtune.worker")


class Worker:
    """Claims jobs (``queue``), validates their files, trains each in a child process (``runner``) that writes its
    events (``job_events``), watches it (cancel, pause, lost lease, shutdown) and writes how the job ended."""

    def __init__(self, settings: Settings, db: Database | None = None, worker_id: str | None = None,
                 poll_seconds: float = 0.5, shutdown_grace: float = 120.0):
        self.settings = settings
        self.db = db or Database(settings.db_url)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id('', 6)}"
        self.poll_seconds = poll_seconds
        self.shutdown_grace = shutdown_grace  # how long a checkpoint may take when the worker is told to stop
        self.stop = threading.Event()
        self.executor = make_executor(settings)
        self.child: RunHandle | None = None  # the running job's handle
        self.lease: Lease | None = None
        self.idle = threading.Event()
        self.idle.set()

    # --- loop -----------------------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("worker %s started", self.id)
        delay = self.poll_seconds
        while not self.stop.is_set():
            claimed = None
            try:
                claimed = claim(self.db, self.id, self.settings.lease_seconds)
                delay = self.poll_seconds
                if claimed:
                    self.idle.clear()
                    self.process(*claimed)
            except LeaseLost as e:
                log.warning("worker %s: lost the lease of %s; left it to its new worker", self.id, e)
            except DB_DOWN as e:  # claim or an ending could not reach the database: back off, never die
                log.warning("worker %s: database unreachable (%s); retrying in %.1f s", self.id, type(e).__name__,
                            delay)
                delay = min(10.0, delay * 2)
                if claimed:
                    self._release_quietly(*claimed)
            except Exception:  # a worker survives any one job
                log.exception("worker %s: error while processing %s", self.id, claimed)
                if claimed:
                    self._release_quietly(*claimed)
            finally:
                self.idle.set()
            if not claimed:
                self.stop.wait(delay)
        self.kill_child()

    def shutdown(self, wait: float | None = None) -> None:
        """Stop taking jobs. A job in training saves a checkpoint and goes back to the queue (within
        ``shutdown_grace`` s, else its processes are killed and it resumes from its previous checkpoint); with
        ``wait``, block until that is done (at most ``wait`` s)."""
        self.stop.set()
        if wait is not None and not self.idle.wait(wait):
            self.kill_child()

    def kill_child(self) -> None:
        child = self.child
        if child is not None:
            child.kill()  # the child's whole process group (torchrun and its ranks), or its Ray actors

    def _release_quietly(self, job_id: str, token: int, requeue: bool = False) -> None:
        """Give the claim back (nothing is written if another worker took it over meanwhile)."""
        try:
            retrying(lambda: release(self.db, job_id, token, requeue), max_wait=30)
        except Exception:  # the lease runs out by itself if the database stays away
            log.exception("worker %s: could not release %s; its lease will expire", self.id, job_id)

    # --- one job --------------------------------------------------------------------------------------------------
    def process(self, job_id: str, token: int) -> None:
        with Lease(self.db, job_id, token, self.id, self.settings.lease_seconds, self.kill_child) as lease:
            self.lease = lease
            try:
                with self.db.session() as s:
                    job = s.scalar(select(JobRow).where(JobRow.id == job_id))
                    if job.attempts > MAX_ATTEMPTS:
                        self._fail(s, job, token, "worker_failed", f"The job was started {job.attempts - 1} times "
                                   "without finishing; giving up.", None)
                        return
                    run_dir = Path(job.run_dir or self.settings.runs_dir / job.id)
                    if job.run_dir is None:
                        fence(s, job_id, token)
                        job.run_dir = str(run_dir)
                    status = job.status
                if status == JobStatus.VALIDATING_FILES:
                    if not self.validate(job_id, token, run_dir):
                        return
                if self.stop.is_set():
                    release(self.db, job_id, token, requeue=True)
                    return
                self.run_job(job_id, token, run_dir)
            finally:
                self.lease = None

    def validate(self, job_id: str, token: int, run_dir: Path) -> bool:
        """validating_files → queued: the job's own copy of its files, each checked as the engine will read it, and
        its hyperparameters resolved from the training file's size. False when the job failed (or was cancelled)."""
        data_dir = run_dir / "data"
        copied = self._copy_files(job_id, token, data_dir)
        if copied is None:
            return False
        model, method = copied
        tokenizer = load_tokenizer(resolve(model))
        n_train = 0
        for param, name in (("training_file", "train.jsonl"), ("validation_file", "validation.jsonl")):
            path = data_dir / name
            if not path.exists():
                continue
            rep = _check_job_file(path, method, tokenizer, self.settings.max_examples)
            stats = rep.stats()
            reason = self._refusal(param, rep.problems, stats["examples"])
            if reason:
                with self.db.session() as s:
                    job = s.scalar(select(JobRow).where(JobRow.id == job_id))
                    self._fail(s, job, token, *reason)
                return False
            if param == "training_file":
                n_train = stats["examples"]
                if "tokens_total" in stats:
                    private_file(data_dir / "tokens").write_text(str(stats["tokens_total"]))
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            method = _with_hyper(job.method, J.resolve_hyperparameters(_hyper(job.method), n_train))
            if not set_status(s, job_id, token, JobStatus.VALIDATING_FILES, status=JobStatus.QUEUED, method=method):
                return False  # cancelled meanwhile (or taken over)
            J.add_event(s, job_id, "Files validated, moving job to queued state", key="validated")
        return True

    def _copy_files(self, job_id: str, token: int, data_dir: Path) -> tuple[str, dict] | None:
        """Copy the job's files into its run (deleting an upload later does not break a resume); (model, method), or
        None when a file was deleted before the job started (the job is failed)."""
        with self.db.session() as s:
            fence(s, job_id, token)
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            train_f, val_f = J.files_of(s, job)
            msg = f"Validating training file: {job.training_file}"
            if job.validation_file:
                msg += f" and validation file: {job.validation_file}"
            J.add_event(s, job.id, msg, key="validating")
            private_dir(data_dir)
            missing = [(p, f) for p, f in (("training_file", train_f), ("validation_file", val_f))
                       if (p == "training_file" or job.validation_file) and (f is None or f.deleted)]
            if missing:
                self._fail(s, job, token, "invalid_file", f"The {missing[0][0].replace('_', ' ')} was deleted "
                           "before the job started.", missing[0][0])
                return None
            shutil.copyfile(train_f.path, private_file(data_dir / "train.jsonl"))  # copies keep the 0600
            if val_f is not None:
                shutil.copyfile(val_f.path, private_file(data_dir / "validation.jsonl"))
            return job.model, job.method

    def _refusal(self, param: str, problems: list, n: int) -> tuple[str, str, str] | None:
        """(code, message, param) of the job's error when this file cannot be trained on, else None."""
        if problems:
            p = problems[0]
            more = f" ({len(problems) - 1} more problem(s) in the file)" if len(problems) > 1 else ""
            return (f"invalid_{param}", f"The job failed due to an invalid {param.replace('_', ' ')}. "
                    f"Example {p.line}: {p.path}: {p.message}{more}", param)
        if param == "training_file" and n < self.settings.min_examples:
            return ("invalid_n_examples", f"Training file has {n} example(s), but must have at least "
                    f"{self.settings.min_examples} examples", "training_file")
        if param == "training_file" and n > self.settings.max_examples:
            return ("invalid_n_examples", f"Training file has {n} examples; the limit is "
                    f"{self.settings.max_examples}", "training_file")
        return None

    def _config(self, job: JobRow, run_dir: Path) -> dict:
        hp = _hyper(job.method)
        data = run_dir / "data"
        cfg = J.train_config(model=job.model, kind=job.method["type"], hp=hp, seed=job.seed,
                             train_path=data / "train.jsonl",
                             validation_path=data / "validation.jsonl" if job.validation_file else None,
                             output=run_dir / "run", scenario=job.method.get("scenario"),
                             grader=job.method.get("reinforcement", {}).get("grader"),
                             judges=job.method.get("judges"))
        n = self.settings.job_nproc * self.settings.job_nnodes
        if n > 1:  # the job's batch size is global: split it over the processes (of all its nodes)
            cfg["train"]["batch_size"] = max(1, -(-hp["batch_size"] // n))
            cfg["distributed"] = {"strategy": "ddp", "nproc": self.settings.job_nproc}
            if self.settings.job_nnodes == 1:
                cfg["distributed"]["master_port"] = free_port()  # (across nodes the Ray executor picks it)
        return cfg

    def run_job(self, job_id: str, token: int, run_dir: Path) -> None:
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if not set_status(s, job_id, token, (JobStatus.QUEUED, JobStatus.RUNNING), status=JobStatus.RUNNING,
                              pause_requested=False):
                return
            cfg = self._config(job, run_dir)
            # a multi-node job starts again from step 0 after a lost node (each node keeps its own launch state)
            resume = bool(list_checkpoints(run_dir / "run")) and self.settings.job_nnodes == 1
            if (run_dir / "run").exists() and not resume:
                shutil.rmtree(run_dir / "run")  # a previous attempt died before its first checkpoint
                shutil.rmtree(run_dir / "nodes", ignore_errors=True)
            J.add_event(s, job.id, "Fine-tuning job started", key="started")
            ft_name = J.fine_tuned_model_name(job)
        try:
            self.child = self.executor.start(self.settings.db_url, job_id, token, ft_name, cfg, resume)
        except JobRefused as e:  # the executor can never run it (Ray: no node has its resources); other errors
            # (a cluster that went away) reach process(): the claim is released and the job tried again
            reason = str(e)
            retrying(lambda: self._not_started(job_id, token, reason), stop=self.lease.lost)
            return
        started = {"worker": self.id, "claim": token, "at": time.time(), "resume": resume}

        def placed(where: dict) -> None:  # one line per training process ever started for the job
            with open(private_file(run_dir / "starts.jsonl"), "a") as fh:
                fh.write(json.dumps(started | where) + "\n")

        self._watch(job_id, placed)
        code, error = self.child.exitcode, self.child.error
        self.child = None
        if self.lease.lost.is_set():
            raise LeaseLost(job_id)
        if error is not None:  # the executor could not start the training (a Ray actor that failed to start)
            retrying(lambda: self._not_started(job_id, token, error), stop=self.lease.lost)
            return
        retrying(lambda: self._ending(job_id, token, run_dir, ft_name, code), stop=self.lease.lost)

    def _watch(self, job_id: str, placed) -> None:
        """Until the training ends: renewals lost, shutdown (checkpoint, then back to the queue), cancel, pause.
        ``placed(where)`` is called once the executor says where the training runs."""
        interrupted, kill_at = False, None
        where = self.child.describe()
        if where is not None:
            placed(where)
        while self.child.alive():
            self.child.wait(1.0)
            if where is None and (where := self.child.describe()) is not None:
                placed(where)
            note = self.child.placement()
            if note:
                try:
                    with self.db.session() as s:
                        J.add_event(s, job_id, note)
                except DB_DOWN:
                    log.warning("worker %s: could not record %r (database unreachable)", self.id, note)
            if self.lease.lost.is_set():
                break
            if self.stop.is_set() and kill_at is None:  # shutting down: checkpoint, then back to the queue
                self.child.interrupt()
                interrupted, kill_at = True, time.monotonic() + self.shutdown_grace
            if kill_at is not None and time.monotonic() > kill_at:
                self.kill_child()
                break
            try:
                with self.db.session() as s:
                    status, pause = s.execute(select(JobRow.status, JobRow.pause_requested)
                                              .where(JobRow.id == job_id)).one()
            except DB_DOWN:
                continue  # the database is away: training goes on, the child buffers its events
            if status == JobStatus.CANCELLED:
                self.kill_child()
                break
            if pause and not interrupted and self.child.alive():
                self.child.interrupt()  # save a checkpoint and stop
                interrupted = True

    def _not_started(self, job_id: str, token: int, reason: str) -> None:
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if job.claims != token:
                raise LeaseLost(job_id)
            if job.status != JobStatus.CANCELLED:
                self._fail(s, job, token, "executor_failed", f"Fine-tuning could not start: {reason}", None)

    def _ending(self, job_id: str, token: int, run_dir: Path, ft_name: str, code: int | None) -> None:
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if job.claims != token:
                raise LeaseLost(job_id)
            if job.status == JobStatus.CANCELLED:
                s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token)
                          .values(lease_until=None, worker_id=None))
                return
            if code == ExitCode.NODE_LOST and not self.stop.is_set():  # its node died: an attempt, then resumed
                s.rollback()
                release(self.db, job_id, token, requeue=False)
                ckpts = list_checkpoints(run_dir / "run")
                at = f" from step {ckpts[-1][0]}" if ckpts and self.settings.job_nnodes == 1 else " from step 0"
                with self.db.session() as s2:
                    J.add_event(s2, job_id, f"The node running the job was lost; the job goes back to the queue "
                                f"and resumes{at} on a node that has its resources", level="warn")
            elif code == ExitCode.OK:
                self._succeed(s, job, token, run_dir, ft_name)
            elif code == ExitCode.INTERRUPTED and job.pause_requested:
                if set_status(s, job_id, token, JobStatus.RUNNING, status=JobStatus.PAUSED, pause_requested=False,
                             lease_until=None, worker_id=None):
                    ckpts = list_checkpoints(run_dir / "run")
                    at = f" at step {ckpts[-1][0]}" if ckpts else ""
                    J.add_event(s, job_id, f"Job paused{at}; resume continues from this checkpoint")
            elif code != ExitCode.OK and self.stop.is_set():  # told to stop: back to the queue, not a failure
                s.rollback()
                release(self.db, job_id, token, requeue=True)
                ckpts = list_checkpoints(run_dir / "run")
                at = f" at step {ckpts[-1][0]}" if ckpts else ""
                with self.db.session() as s2:
                    J.add_event(s2, job_id, f"Worker stopping: job returned to the queue{at}; another worker "
                                "resumes it from its last checkpoint")
            else:
                err = _last_error(s, job_id) or f"training process exited with code {code}"
                self._fail(s, job, token, "training_failed", f"Fine-tuning failed: {err}", None)

    # --- endings ----------------------------------------------------------------------------------------------------
    def _succeed(self, s, job: JobRow, token: int, run_dir: Path, ft_name: str) -> None:
        hp = _hyper(job.method)
        tokens_file = run_dir / "data" / "tokens"
        tokens = int(tokens_file.read_text()) if tokens_file.exists() else 0
        if not set_status(s, job.id, token, JobStatus.RUNNING, status=JobStatus.SUCCEEDED, fine_tuned_model=ft_name,
                         finished_at=now(), trained_tokens=tokens * int(hp["n_epochs"]), lease_until=None,
                         worker_id=None):
            return  # cancelled while the last step ran: the cancel wins
        metrics_csv = (run_dir / "run" / "metrics.csv").read_bytes()
        # OpenAI serves the result file base64-encoded; clients decode it with base64.b64decode (spec §5).
        result = store_file(session=s, settings=self.settings, project=job.project_id, filename="step_metrics.csv",
                            purpose="fine-tune-results", content=base64.b64encode(metrics_csv))
        results = [result.id]
        report = run_dir / "run" / "report.md"
        if report.exists():  # a scenario job: its before/after report and plots, as written
            for path in [report, *sorted((run_dir / "run" / "plots").glob("*.png"))]:
                results.append(store_file(session=s, settings=self.settings, project=job.project_id,
                                          filename=path.name, purpose="fine-tune-results",
                                          content=path.read_bytes()).id)
        s.execute(update(JobRow).where(JobRow.id == job.id).values(result_files=results))
        J.add_event(s, job.id, f"New fine-tuned model created: {ft_name}", key="model-created")
        J.add_event(s, job.id, "The job has successfully completed", key=JobStatus.SUCCEEDED)

    def _fail(self, s, job: JobRow, token: int, code: str, message: str, param: str | None) -> None:
        if set_status(s, job.id, token, JobStatus.claimable(), status=JobStatus.FAILED,
                     error={"code": code, "message": message, "param": param}, finished_at=now(),
                     lease_until=None, worker_id=None):
            J.add_event(s, job.id, message, level="error", key=JobStatus.FAILED)
            if job.run_dir:  # a failed job has no model: its data copies and checkpoints stop taking room
                shutil.rmtree(job.run_dir, ignore_errors=True)


class _ScenarioCheck:
    """A scenario file's records checked as the engine will read them, shaped like the data check's report."""

    def __init__(self, path: Path, scenario: str):
        self.records, self.problems = read_records(path, scenario)

    def stats(self) -> dict:
        return {"examples": len(self.records)}


class _PromptCheck:
    """A reinforcement file's prompt records, each checked against the grader's templates (a field a template names
    and the line lacks is the line's problem), shaped like the data check's report."""

    def __init__(self, path: Path, grader: dict, max_examples: int):
        self.records, self.problems = read_graded_prompts(path, parse_grader(grader), limit=max_examples + 1)

    def stats(self) -> dict:
        return {"examples": len(self.records)}


def _hyper(method: dict) -> dict:
    return dict(method[method["type"]]["hyperparameters"])


def _with_hyper(method: dict, hp: dict) -> dict:
    return {**method, method["type"]: {**method.get(method["type"], {}), "hyperparameters": hp}}


def _last_error(s, job_id: str) -> str | None:
    row = s.scalar(select(EventRow).where(EventRow.job_id == job_id, EventRow.level == "error")
                   .order_by(EventRow.seq.desc()).limit(1))
    return row.message if row else None


# --- workers in the server process ------------------------------------------------------------------------------
def start_worker_threads(settings: Settings, db: Database, n: int) -> list[Worker]:
    workers = []
    for _ in range(n):
        w = Worker(settings, db)
        threading.Thread(target=w.run_forever, name=f"slmtune-worker-{w.id}", daemon=True).start()
        workers.append(w)
    return workers


__all__ = ["MAX_ATTEMPTS", "Worker", "start_worker_threads"]


def _check_job_file(path: Path, method: dict, tokenizer, max_examples: int):
    """The file's check as the job's method reads it: scenario records, or examples of the kind the method trains on
    (preference records for dpo, chat or prompt/completion otherwise). Streamed: nothing is held per example, and
    reading stops one past the most examples a job may have (the refusal then says so)."""
    if method.get("scenario"):  # scenario records: the engine turns them into chat examples
        return _ScenarioCheck(path, method["scenario"])
    if method["type"] == "reinforcement":
        return _PromptCheck(path, method["reinforcement"]["grader"], max_examples)
    rep = check_file(path, tokenizer, max_seq_length=1024, keep=0, limit=max_examples + 1)
    if not rep.problems and rep.kind is not None:
        kind, line = rep.kind  # one kind a file (the reader makes a mixed file a problem): the first record's
        why = objective_mismatch(kind, "sft" if method["type"] == "supervised" else method["type"])
        if why:
            rep.problems.append(Problem(str(path), line, "(root)", why))
    return rep
