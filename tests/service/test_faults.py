"""Real faults during real jobs: SIGTERM to the server, PostgreSQL restarted, three workers racing, a full disk while
checkpointing, a cancel racing success. Each ends with the job in a state a user can trust and no event lost or
written twice. (kill -9 of a worker mid-training is in test_recovery.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from slmtune.service.settings import Settings
from slmtune.service.worker import Worker
from tests.helpers import FACTS, chat_record, write_jsonl
from tests.service.conftest import ServeProcess, make_db_url, sqlite_is_enough, start_server, wait_for, wait_status
from tests.service.test_recovery import metrics_steps, start_worker


def upload(client, tmp: Path, n: int, name: str = "t.jsonl"):
    path = write_jsonl(tmp / name, [chat_record(*FACTS[i % 4]) for i in range(n)])
    return client.files.create(file=open(path, "rb"), purpose="fine-tune")


def messages(client, job_id: str) -> list[str]:
    return [e.message for e in reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data)]


def training_job(client, tmp: Path, n_epochs: int, past_step: int):
    """A tiny-llama job on 240 examples (60 steps an epoch), returned once its metrics have reached ``past_step``."""
    f = upload(client, tmp, 240)
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                         hyperparameters={"n_epochs": n_epochs, "batch_size": 4})
    wait_for(lambda: max(metrics_steps(client, job.id), default=0) >= past_step, timeout=240)
    return job


def assert_every_step_once(client, job_id: str, total: int) -> None:
    assert sorted(metrics_steps(client, job_id)) == list(range(1, total + 1)), "every step's metrics exactly once"
    msgs = messages(client, job_id)
    assert msgs.count("Fine-tuning job started") == 1 and msgs.count("The job has successfully completed") == 1


def starts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "starts.jsonl").read_text().splitlines()]


def handed_back_at(client, job_id: str) -> list[int]:
    """The steps at which a stopping worker handed the job back to the queue, oldest first."""
    prefix = "Worker stopping: job returned to the queue at step "
    return [int(m[len(prefix):].split(";")[0]) for m in messages(client, job_id) if m.startswith(prefix)]


def test_sigterm_to_the_server_then_to_a_worker_hands_the_job_back_each_time_and_it_finishes(backend, tmp_path):
    sqlite_is_enough(backend, "the hand-back is the process's; PostgreSQL's own faults are the restart and the "
                              "racing workers below")
    db = make_db_url(backend, tmp_path)
    srv = ServeProcess(db, tmp_path / "data", "--no-auth")
    again = worker = last = None
    try:
        c = srv.client()
        job = training_job(c, tmp_path, n_epochs=3, past_step=10)  # 180 steps
        srv.proc.send_signal(signal.SIGTERM)  # what systemd or Kubernetes sends on a restart
        # uvicorn shuts down gracefully, then re-raises the signal: the exit status says "terminated by SIGTERM"
        assert srv.proc.wait(120) in (0, -signal.SIGTERM), srv.output()
        srv.log.close()

        again = ServeProcess(db, tmp_path / "data", "--no-auth", "--no-worker")
        c = again.client()
        first = handed_back_at(c, job.id)
        assert len(first) == 1 and 10 <= first[0] < 180, first  # checkpointed when the signal came
        assert c.fine_tuning.jobs.retrieve(job.id).status == "queued"

        worker = start_worker(db, tmp_path / "data")
        wait_for(lambda: max(metrics_steps(c, job.id), default=0) >= first[0] + 5, timeout=240)
        worker.send_signal(signal.SIGTERM)  # `slmtune worker` the same way
        assert worker.wait(120) == 0, worker.stderr.read().decode()[-3000:]
        second = handed_back_at(c, job.id)
        assert len(second) == 2 and first[0] < second[1] < 180, second

        last = start_worker(db, tmp_path / "data")
        done = wait_status(c, job.id, ("succeeded", "failed"), timeout=400)
        assert done.status == "succeeded", done.error
        assert_every_step_once(c, job.id, 180)
        text = " ".join(messages(c, job.id))
        assert all(f"Resuming from checkpoints/step-{s}" in text for s in second)
        run_dir = tmp_path / "data" / "runs" / job.id
        assert [s["resume"] for s in starts(run_dir)] == [False, True, True]  # three starts, no failed attempt
    finally:
        for s in (srv, again):
            if s is not None:
                s.kill()
        for p in (worker, last):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.serial  # it restarts the PostgreSQL cluster every other test shares
@pytest.mark.skipif(not os.environ.get("SLMTUNE_TEST_POSTGRES_URL"), reason="needs PostgreSQL")
def test_postgresql_restarted_mid_job_loses_no_event(tmp_path):
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    srv = start_server("postgres", tmp_path, workers=1, auth=False)
    try:
        c = srv.client()
        # 480 steps: the tiny model trains ~50 steps/s on an idle machine, so the job outlasts the outage
        job = training_job(c, tmp_path, n_epochs=8, past_step=5)
        ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
        subprocess.run([*ctl, "stop", "-m", "fast"], check=True, capture_output=True, timeout=60)
        down = time.time()
        time.sleep(6)  # longer than the lease (3 s): training goes on, events wait in memory
        subprocess.run([*ctl, "start"], check=True, capture_output=True, timeout=60)
        up = time.time()
        done = wait_status(c, job.id, ("succeeded", "failed"), timeout=400)
        assert done.status == "succeeded", done.error
        assert_every_step_once(c, job.id, 480)
        during = [e for e in c.fine_tuning.jobs.list_events(job.id, limit=1000).data
                  if e.type == "metrics" and int(down) + 1 <= e.created_at <= int(up) - 1]
        assert during, "steps trained while the database was down are stored with the time they happened"
        assert len(starts(tmp_path / "data" / "runs" / job.id)) == 1  # the outage never restarted training
    finally:
        srv.stop()


@pytest.mark.skipif(not os.environ.get("SLMTUNE_TEST_POSTGRES_URL"), reason="needs PostgreSQL")
def test_three_workers_racing_on_postgresql_train_every_job_exactly_once(tmp_path):
    srv = start_server("postgres", tmp_path, workers=0, auth=False, max_active_jobs_per_project=8)
    workers = []
    try:
        c = srv.client()
        f = upload(c, tmp_path, 16)
        jobs = [c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                          hyperparameters={"n_epochs": 1, "batch_size": 4}) for _ in range(6)]
        workers = [start_worker(srv.settings.db_url, srv.settings.data_dir) for _ in range(3)]
        for job in jobs:
            done = wait_status(c, job.id, ("succeeded", "failed"), timeout=600)
            assert done.status == "succeeded", done.error
            assert sorted(metrics_steps(c, job.id)) == [1, 2, 3, 4]
        lines = {job.id: starts(tmp_path / "data" / "runs" / job.id) for job in jobs}
        assert all(len(v) == 1 for v in lines.values()), lines  # 6 child starts for 6 jobs (twice the workers)
        assert len({s[0]["worker"] for s in lines.values()}) > 1  # the work was shared
    finally:
        for p in workers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        srv.stop()


def test_a_full_disk_while_checkpointing_fails_the_job_clearly_and_keeps_the_database_consistent(tmp_path):
    runs = tmp_path / "data" / "runs"
    runs.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(runs)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:  # the mount goes away whatever happens inside
        srv = start_server("sqlite", tmp_path, workers=1, auth=False)
        try:
            c = srv.client()
            job = training_job(c, tmp_path, n_epochs=2, past_step=1)  # its first checkpoint comes at step 60
            filler = runs / "filler"
            with open(filler, "wb", buffering=0) as fh:  # take every byte left on the disk
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                except OSError:
                    pass
            done = wait_status(c, job.id, ("succeeded", "failed"), timeout=300)
            assert done.status == "failed"
            assert done.error.code == "training_failed" and "No space left on device" in done.error.message, done.error
            assert c.fine_tuning.jobs.checkpoints.list(job.id).data == []  # no row for a checkpoint never written
            assert done.fine_tuned_model is None and not [m for m in c.models.list().data if m.id.startswith("ft:")]
            msgs = messages(c, job.id)
            assert msgs[-1] == done.error.message and "Fine-tuning job started" in msgs
            filler.unlink()  # space again: the service goes on as before
            job2 = c.fine_tuning.jobs.create(model="tiny-llama", training_file=upload(c, tmp_path, 16, "s.jsonl").id,
                                             hyperparameters={"n_epochs": 1, "batch_size": 4})
            assert wait_status(c, job2.id, ("succeeded", "failed"), timeout=300).status == "succeeded"
        finally:
            srv.stop()
    finally:
        subprocess.run(["umount", "-l", str(runs)], capture_output=True)


class CancelAtTheFinish(Worker):
    """A worker whose job is cancelled through the API at the worst moment: training has ended successfully and
    the worker is about to record the success."""

    def __init__(self, *a, cancel, **kw):
        super().__init__(*a, **kw)
        self.cancel, self.answer = cancel, None

    def _ending(self, job_id, token, run_dir, ft_name, code):
        if self.answer is None:
            try:
                self.answer = self.cancel(job_id)
            except Exception as e:  # noqa: BLE001 - the test reads what the API said
                self.answer = e
        return super()._ending(job_id, token, run_dir, ft_name, code)


def test_a_cancel_racing_success_wins_and_a_late_cancel_is_refused(backend, tmp_path):
    srv = start_server(backend, tmp_path, workers=0, auth=False)
    try:
        c = srv.client()
        f = upload(c, tmp_path, 16)
        job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                        hyperparameters={"n_epochs": 1, "batch_size": 4})
        w = CancelAtTheFinish(Settings(db_url=srv.settings.db_url, data_dir=srv.settings.data_dir, lease_seconds=3),
                              cancel=lambda jid: c.fine_tuning.jobs.cancel(jid))
        t = threading.Thread(target=w.run_forever, daemon=True)
        t.start()
        done = wait_status(c, job.id, ("succeeded", "failed", "cancelled"), timeout=300)
        wait_for(lambda: w.answer is not None and w.idle.is_set())
        assert w.answer.status == "cancelled"  # the API accepted the cancel ...
        time.sleep(1)
        job_now = c.fine_tuning.jobs.retrieve(job.id)
        assert done.status == job_now.status == "cancelled"  # ... and it stands: success never overwrote it
        assert job_now.fine_tuned_model is None and job_now.result_files == []
        assert "The job has successfully completed" not in messages(c, job.id)
        # no tuned model appears (its per-epoch checkpoints stay listed, as for any job that stopped early)
        assert not [m for m in c.models.list().data if m.id.startswith("ft:") and ":ckpt-step-" not in m.id]

        # the other order: a cancel after the success was recorded is refused and changes nothing
        w.cancel = lambda jid: None
        w.answer = None
        job2 = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                         hyperparameters={"n_epochs": 1, "batch_size": 4})
        assert wait_status(c, job2.id, ("succeeded", "failed"), timeout=300).status == "succeeded"
        import openai

        with pytest.raises(openai.BadRequestError) as e:
            c.fine_tuning.jobs.cancel(job2.id)
        assert "succeeded" in e.value.body["message"]
        assert c.fine_tuning.jobs.retrieve(job2.id).fine_tuned_model is not None
        w.shutdown(wait=30)
        t.join(30)
    finally:
        srv.stop()
