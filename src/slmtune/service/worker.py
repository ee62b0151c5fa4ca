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
* Training runs in a spawned child process (``slmtune.train``, the same engine as the CLI), so a crash, an
  out-of-memory kill or a cancel never takes the worker or the API down. The child dies with its worker
  (PR_SET_PDEATHSIG), so a killed worker leaves no orphan writing to the job.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
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
from sqlalchemy.exc import DBAPIError, OperationalError

from slmtune.service import jobs as J
from slmtune.service.db import CheckpointRow, Database, EventRow, JobRow, new_id, now
from slmtune.service.files import store_file
from slmtune.service.settings import Settings

log = logging.getLogger("slmtune.worker")

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LEASE_LOST = 0, 1, 3, 4
MAX_ATTEMPTS = 5
JOB_NICE = 10  # niceness of training processes (their launchers and ranks inherit it)
DB_DOWN = (OperationalError, DBAPIError)  # connection refused / reset / server restarting
JOB_GROUP_ENV = "SLMTUNE_JOB_GROUP"  # set in the training child: launchers keep their processes in its group


class LeaseLost(RuntimeError):
    """Another worker holds the job now (its claim bumped the fencing token)."""


def fence(s, job_id: str, token: int) -> None:
    """In a write transaction: take the job row's write lock and check the claim is still ours."""
    res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token)
                    .values(claims=JobRow.claims))
    if res.rowcount != 1:
        raise LeaseLost(job_id)


def retrying(fn, *, stop: threading.Event | None = None, what: str = "database", max_wait: float = 600.0):
    """Call ``fn`` until the database answers: backoff 0.5 s doubling to 10 s, for at most ``max_wait`` s."""
    delay, deadline = 0.5, time.monotonic() + max_wait
    while True:
        try:
            return fn()
        except DB_DOWN as e:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                raise
            log.warning("%s unreachable (%s); retrying in %.1f s", what, type(e).__name__, delay)
            time.sleep(delay)
            delay = min(10.0, delay * 2)


class Lease:
    """The heartbeat of one claim: renews it on database time; sets ``lost`` (and calls ``on_lost``) once the
    token is gone. While the database is unreachable it keeps trying; training goes on meanwhile."""

    def __init__(self, db: Database, job_id: str, token: int, worker_id: str, seconds: float, on_lost):
        self.db, self.job_id, self.token, self.worker_id, self.seconds = db, job_id, token, worker_id, seconds
        self.on_lost = on_lost
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def renew(self) -> bool:
        with self.db.session() as s:
            res = s.execute(update(JobRow).where(JobRow.id == self.job_id, JobRow.claims == self.token)
                            .values(lease_until=self.db.clock() + self.seconds, worker_id=self.worker_id))
            return res.rowcount == 1

    def _loop(self) -> None:
        while not self._stop.wait(max(0.2, self.seconds / 3)):
            try:
                ok = self.renew()
            except DB_DOWN as e:
                log.warning("lease of %s: database unreachable (%s); training goes on", self.job_id, type(e).__name__)
                continue
            except Exception:  # noqa: BLE001 - the heartbeat must outlive any one failure
                log.exception("lease of %s: renewal failed", self.job_id)
                continue
            if not ok:
                log.warning("lease of %s lost (another worker claimed it): stopping its training", self.job_id)
                self.lost.set()
                self.on_lost()
                return


class Worker:
    def __init__(self, settings: Settings, db: Database | None = None, worker_id: str | None = None,
                 poll_seconds: float = 0.5, shutdown_grace: float = 120.0):
        self.settings = settings
        self.db = db or Database(settings.db_url)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id('', 6)}"
        self.poll_seconds = poll_seconds
        self.shutdown_grace = shutdown_grace  # how long a checkpoint may take when the worker is told to stop
        self.stop = threading.Event()
        self.child: mp.Process | None = None
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
                claimed = self.claim()
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
            except Exception:  # noqa: BLE001 - a worker survives any one job
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
        if child is not None and child.pid:
            try:
                os.killpg(child.pid, signal.SIGKILL)  # the child leads its group: torchrun and ranks go too
            except ProcessLookupError:
                pass
            child.join(5)

    def claim(self) -> tuple[str, int] | None:
        clock = self.db.clock()
        expired = or_(JobRow.lease_until.is_(None), JobRow.lease_until < clock)
        with self.db.session() as s:
            candidates = s.execute(
                select(JobRow.id, JobRow.status).where(
                    JobRow.status.in_(("validating_files", "queued", "running")), expired,
                ).order_by(JobRow.seq).limit(10)
            ).all()
        for job_id, status in candidates:
            with self.db.session() as s:
                res = s.execute(
                    update(JobRow)
                    .where(and_(JobRow.id == job_id, JobRow.status == status, expired))
                    .values(worker_id=self.id, lease_until=clock + self.settings.lease_seconds,
                            attempts=JobRow.attempts + 1, claims=JobRow.claims + 1)
                )
                if res.rowcount == 1:
                    token = s.scalar(select(JobRow.claims).where(JobRow.id == job_id))
                    return job_id, token
        return None

    def _release_quietly(self, job_id: str, token: int, requeue: bool = False) -> None:
        """Give the claim back (nothing is written if another worker took it over meanwhile)."""
        try:
            retrying(lambda: self._release(job_id, token, requeue), max_wait=30)
        except Exception:  # noqa: BLE001 - the lease runs out by itself if the database stays away
            log.exception("worker %s: could not release %s; its lease will expire", self.id, job_id)

    def _release(self, job_id: str, token: int, requeue: bool) -> None:
        with self.db.session() as s:
            values = {"lease_until": None, "worker_id": None}
            if requeue:  # a clean stop, not a failed attempt
                values |= {"attempts": JobRow.attempts - 1}
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token).values(**values))
            if requeue:
                s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token,
                                               JobRow.status == "running").values(status="queued"))

    def _set(self, s, job_id: str, token: int, expected, **values) -> bool:
        """Compare-and-set a status change: only while the claim is ours and the status is one of ``expected``."""
        expected = (expected,) if isinstance(expected, str) else tuple(expected)
        res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token,
                                             JobRow.status.in_(expected)).values(**values))
        return res.rowcount == 1

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
                if status == "validating_files":
                    if not self.validate(job_id, token, run_dir):
                        return
                if self.stop.is_set():
                    self._release(job_id, token, requeue=True)
                    return
                self.train(job_id, token, run_dir)
            finally:
                self.lease = None

    def validate(self, job_id: str, token: int, run_dir: Path) -> bool:
        from slmtune.data.formats import Problem
        from slmtune.data.validate import check_file
        from slmtune.models.loading import load_tokenizer
        from slmtune.models.registry import resolve

        with self.db.session() as s:
            fence(s, job_id, token)
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
                self._fail(s, job, token, "invalid_file", f"The {missing[0][0].replace('_', ' ')} was deleted "
                           "before the job started.", missing[0][0])
                return False
            # The job keeps its own copy: deleting the upload later does not break a resume.
            shutil.copyfile(train_f.path, data_dir / "train.jsonl")
            if val_f is not None:
                shutil.copyfile(val_f.path, data_dir / "validation.jsonl")
            model, method = job.model, job.method
        tokenizer = load_tokenizer(resolve(model))
        want = "preference" if method["type"] == "dpo" else None
        n_train = 0
        for param, name in (("training_file", "train.jsonl"), ("validation_file", "validation.jsonl")):
            path = data_dir / name
            if not path.exists():
                continue
            if method.get("scenario"):  # scenario records: the engine turns them into chat examples
                rep = _ScenarioCheck(path, method["scenario"])
            else:
                rep = check_file(path, tokenizer, max_seq_length=1024)
            if not rep.problems and not method.get("scenario"):
                for ex in rep.examples.values():
                    if (want and ex.kind != want) or (not want and ex.kind == "preference"):
                        rep.problems.append(Problem(str(path), ex.line, "(root)", (
                            f"{ex.kind} format, but method {method['type']} needs "
                            + ("preference records (input, preferred_output, non_preferred_output)" if want
                               else "chat or prompt/completion records"))))
                        break
            reason = None
            n = rep.stats()["examples"]
            if rep.problems:
                p = rep.problems[0]
                more = f" ({len(rep.problems) - 1} more problem(s) in the file)" if len(rep.problems) > 1 else ""
                reason = (f"invalid_{param}", f"The job failed due to an invalid {param.replace('_', ' ')}. "
                          f"Example {p.line}: {p.path}: {p.message}{more}", param)
            elif param == "training_file" and n < self.settings.min_examples:
                reason = ("invalid_n_examples", f"Training file has {n} example(s), but must have at least "
                          f"{self.settings.min_examples} examples", "training_file")
            elif param == "training_file" and n > self.settings.max_examples:
                reason = ("invalid_n_examples", f"Training file has {n} examples; the limit is "
                          f"{self.settings.max_examples}", "training_file")
            if reason:
                with self.db.session() as s:
                    job = s.scalar(select(JobRow).where(JobRow.id == job_id))
                    self._fail(s, job, token, *reason)
                return False
            if param == "training_file":
                n_train = n
                if "tokens_total" in rep.stats():
                    (run_dir / "data" / "tokens").write_text(str(rep.stats()["tokens_total"]))
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            method = _with_hyper(job.method, J.resolve_hyperparameters(_hyper(job.method), n_train))
            if not self._set(s, job_id, token, "validating_files", status="queued", method=method):
                return False  # cancelled meanwhile (or taken over)
            J.add_event(s, job_id, "Files validated, moving job to queued state", key="validated")
        return True

    def _config(self, job: JobRow, run_dir: Path) -> dict:
        hp = _hyper(job.method)
        data = run_dir / "data"
        cfg = J.train_config(model=job.model, kind=job.method["type"], hp=hp, seed=job.seed,
                             train_path=data / "train.jsonl",
                             validation_path=data / "validation.jsonl" if job.validation_file else None,
                             output=run_dir / "run", scenario=job.method.get("scenario"))
        if self.settings.job_nproc > 1:  # the job's batch size is global: split it over the processes
            from slmtune.training.distributed import free_port

            n = self.settings.job_nproc
            cfg["train"]["batch_size"] = max(1, -(-hp["batch_size"] // n))
            cfg["distributed"] = {"strategy": "ddp", "nproc": n, "master_port": free_port()}
        return cfg

    def train(self, job_id: str, token: int, run_dir: Path) -> None:
        from slmtune.artifacts import list_checkpoints

        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if not self._set(s, job_id, token, ("queued", "running"), status="running", pause_requested=False):
                return
            cfg = self._config(job, run_dir)
            resume = bool(list_checkpoints(run_dir / "run"))
            if (run_dir / "run").exists() and not resume:
                shutil.rmtree(run_dir / "run")  # a previous attempt died before its first checkpoint
            J.add_event(s, job.id, "Fine-tuning job started", key="started")
            ft_name = J.fine_tuned_model_name(job)
        ctx = mp.get_context("spawn")
        self.child = ctx.Process(target=_child_main, args=(self.settings.db_url, job_id, token, ft_name, cfg, resume,
                                                             os.getpid()), daemon=True)
        self.child.start()
        with open(run_dir / "starts.jsonl", "a") as fh:  # one line per training process ever started for the job
            fh.write(json.dumps({"worker": self.id, "claim": token, "pid": self.child.pid, "at": time.time(),
                                 "resume": resume}) + "\n")
        interrupted, kill_at = False, None
        while self.child.is_alive():
            self.child.join(1.0)
            if self.lease.lost.is_set():
                break
            if self.stop.is_set() and kill_at is None:  # shutting down: checkpoint, then back to the queue
                os.killpg(self.child.pid, signal.SIGINT)
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
            if status == "cancelled":
                self.kill_child()
                break
            if pause and not interrupted and self.child.is_alive():
                os.killpg(self.child.pid, signal.SIGINT)  # save a checkpoint and stop
                interrupted = True
        code = self.child.exitcode
        self.child = None
        if self.lease.lost.is_set():
            raise LeaseLost(job_id)
        retrying(lambda: self._ending(job_id, token, run_dir, ft_name, code), stop=self.lease.lost)

    def _ending(self, job_id: str, token: int, run_dir: Path, ft_name: str, code: int | None) -> None:
        from slmtune.artifacts import list_checkpoints

        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if job.claims != token:
                raise LeaseLost(job_id)
            if job.status == "cancelled":
                s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.claims == token)
                          .values(lease_until=None, worker_id=None))
                return
            if code == EXIT_OK:
                self._succeed(s, job, token, run_dir, ft_name)
            elif code == EXIT_INTERRUPTED and job.pause_requested:
                if self._set(s, job_id, token, "running", status="paused", pause_requested=False,
                             lease_until=None, worker_id=None):
                    ckpts = list_checkpoints(run_dir / "run")
                    at = f" at step {ckpts[-1][0]}" if ckpts else ""
                    J.add_event(s, job_id, f"Job paused{at}; resume continues from this checkpoint")
            elif code != EXIT_OK and self.stop.is_set():  # told to stop: back to the queue, not a failure
                s.rollback()
                self._release(job_id, token, requeue=True)
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
        if not self._set(s, job.id, token, "running", status="succeeded", fine_tuned_model=ft_name,
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
        J.add_event(s, job.id, "The job has successfully completed", key="succeeded")

    def _fail(self, s, job: JobRow, token: int, code: str, message: str, param: str | None) -> None:
        if self._set(s, job.id, token, ("validating_files", "queued", "running"), status="failed",
                     error={"code": code, "message": message, "param": param}, finished_at=now(),
                     lease_until=None, worker_id=None):
            J.add_event(s, job.id, message, level="error", key="failed")


class _ScenarioCheck:
    """A scenario file's records checked as the engine will read them, shaped like the data check's report."""

    def __init__(self, path: Path, scenario: str):
        from slmtune.scenarios.records import read_records

        self.records, self.problems = read_records(path, scenario)

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


# --- the child process -------------------------------------------------------------------------------------------
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
                    os._exit(EXIT_LEASE_LOST)
                self._pending.popleft()

    def _write(self, s, event) -> None:
        d, at = event.data, int(event.created_at)
        if event.type == "metrics":
            keep = ("step", "total_steps", "train_loss", "train_mean_token_accuracy", "valid_loss",
                    "valid_mean_token_accuracy", "learning_rate", "tokens_per_second")
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
            metrics = {k: v for k, v in self.last_metrics.items() if k not in ("total_steps", "learning_rate",
                                                                               "tokens_per_second")}
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
        J.add_event(s, self.job_id, event.message, level=event.level, data={}, key=key, created_at=at)


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(EXIT_FAILED)


def _child_main(db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool,
                parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    os.setpgid(0, 0)  # lead a process group: the worker's cancel or lost lease kills all of it, launchers included
    # Training is batch work beside an interactive API (often in the same server): it yields the CPU to requests.
    # (200 API clients for 60 s beside a job on 2 cores: p50 3.5 s before, 2.5 s after; docs/benchmarks.md.)
    os.nice(JOB_NICE)
    os.environ[JOB_GROUP_ENV] = "1"
    db = Database(db_url)
    sink = DBSink(db, job_id, token, ft_name)
    try:
        from slmtune.scenarios.run import train  # the engine, wrapped by a scenario run for scenario jobs

        result = train(cfg, resume=resume, sinks=[sink])
        code = EXIT_OK if result.status == "succeeded" else EXIT_INTERRUPTED
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BaseException:  # noqa: BLE001 - the engine already emitted the error as an event
        code = EXIT_FAILED
    try:
        sink.close()
    except Exception:  # noqa: BLE001 - events that never reached the database: the job cannot be trusted
        code = EXIT_FAILED
    os._exit(code)


def start_worker_threads(settings: Settings, db: Database, n: int) -> list[Worker]:
    workers = []
    for _ in range(n):
        w = Worker(settings, db)
        threading.Thread(target=w.run_forever, name=f"slmtune-worker-{w.id}", daemon=True).start()
        workers.append(w)
    return workers


__all__ = ["DBSink", "Worker", "start_worker_threads"]
