"""Nothing acknowledged is lost: a killed worker's job resumes elsewhere, and a restarted server keeps its state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import FACTS, chat_record, write_jsonl
from tests.service.conftest import start_server, wait_for, wait_status


def start_worker(db_url: str, data_dir: Path) -> subprocess.Popen:
    """`slmtune worker` in its own session (a process group its test can kill whole)."""
    exe = Path(sys.executable).parent / "slmtune"
    return subprocess.Popen(
        [str(exe), "worker", "--db", db_url, "--data-dir", str(data_dir),
         "--lease-seconds", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "SLMTUNE_TEST_MODELS": "1"},
        start_new_session=True,
    )


def metrics_steps(client, job_id):
    return [e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data
            if e.type == "metrics" and "train_loss" in e.data]


def test_killed_worker_job_resumes_from_its_checkpoint_with_no_event_lost_or_doubled(backend, tmp_path):
    srv = start_server(backend, tmp_path, workers=0, auth=False)
    first = second = None
    try:
        c = srv.client()
        path = write_jsonl(tmp_path / "t.jsonl", [chat_record(*FACTS[i % 4]) for i in range(240)])
        f = c.files.create(file=open(path, "rb"), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                        hyperparameters={"n_epochs": 3, "batch_size": 4})  # 60 steps an epoch
        first = start_worker(srv.settings.db_url, srv.settings.data_dir)
        wait_for(lambda: c.fine_tuning.jobs.checkpoints.list(job.id).data, timeout=240)
        wait_for(lambda: max(metrics_steps(c, job.id), default=0) >= 65, timeout=240)  # past the checkpoint
        os.killpg(first.pid, signal.SIGKILL)  # worker and its training child, as a machine failure would
        first.wait(10)
        killed_at = max(metrics_steps(c, job.id))
        assert c.fine_tuning.jobs.retrieve(job.id).status == "running"  # nobody told the database

        # takes the job over once the lease (3 s) runs out
        second = start_worker(srv.settings.db_url, srv.settings.data_dir)
        done = wait_status(c, job.id, ("succeeded", "failed"), timeout=400)
        assert done.status == "succeeded", done.error
        steps = metrics_steps(c, job.id)
        assert sorted(steps) == list(range(1, 181)), "every step's metrics exactly once"
        msgs = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=1000).data]
        resumed = [m for m in msgs if m.startswith("Resuming from checkpoints/step-")]
        assert resumed and int(resumed[0].split("step-")[1].split()[0]) < killed_at
        assert msgs.count("Fine-tuning job started") == 1 and msgs.count("The job has successfully completed") == 1
        assert [ck.step_number for ck in c.fine_tuning.jobs.checkpoints.list(job.id).data] == [180, 120, 60]
    finally:
        for p in (first, second):
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        srv.stop()


def test_state_survives_a_server_restart(backend, tmp_path):
    srv = start_server(backend, tmp_path, workers=1, auth=True)
    key = srv.new_key("keep")
    c = srv.client(key)
    path = write_jsonl(tmp_path / "t.jsonl", [chat_record(*FACTS[i % 4]) for i in range(16)])
    f = c.files.create(file=open(path, "rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, metadata={"k": "v"},
                                    hyperparameters={"n_epochs": 1, "batch_size": 4})
    job = wait_status(c, job.id, ("succeeded", "failed"))
    events = [e.id for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data]
    srv.stop()

    srv2 = type(srv)(srv.settings, workers=1).start()  # same database and data directory, new process state
    try:
        c2 = srv2.client(key)
        assert c2.files.retrieve(f.id).bytes == f.bytes
        again = c2.fine_tuning.jobs.retrieve(job.id)
        assert again.model_dump() == job.model_dump()
        assert [e.id for e in c2.fine_tuning.jobs.list_events(job.id, limit=100).data] == events
        r = c2.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4)
        assert r.choices[0].message.content is not None
    finally:
        srv2.stop()
