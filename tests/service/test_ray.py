"""The Ray executor on a real local Ray cluster: `ray start --head` on loopback plus a second node joined with
`ray start --address`, each in a process group of its own that the test stops (only those: never `ray stop`).

Jobs are created through the `openai` SDK against a real server whose worker runs them on the cluster; the
server's process is the Ray driver, so the test reads node ids and places blockers through the same connection.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmtune.training.distributed import free_port
from tests.helpers import FACTS, chat_record, write_jsonl
from tests.service.conftest import start_server, wait_for, wait_status

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'slmtune[ray]')") \
    if not os.environ.get("CI") else __import__("ray")

RAY = str(Path(sys.executable).parent / "ray")
HYPER = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}
REL_TOL = 0.03  # as tests/integration/test_distributed.py: DDP's logged loss is the mean of the ranks' losses


class Cluster:
    """A local Ray cluster of real nodes; each `ray start` leads a process group that holds its node's daemons."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tmp = tmp
        self.groups: dict[str, int] = {}
        # Ray's token authentication off for the nodes and this driver alike: a ~/.ray/auth_token left by an earlier
        # local Ray (ray.init) turns it on for `ray start` only, and the joining node and the driver are then refused
        os.environ["RAY_AUTH_MODE"] = "disabled"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self, name: str, resources: dict, head: bool = False) -> None:
        args = ["--head", "--port", str(self.port), "--include-dashboard=false"] if head else [
            "--address", self.address]
        log = open(self.tmp / f"ray-{name}.log", "w")
        proc = subprocess.Popen([RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                                 "--resources", json.dumps(resources), "--disable-usage-stats"],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        assert proc.wait(120) == 0, (self.tmp / f"ray-{name}.log").read_text()[-3000:]
        self.groups[name] = proc.pid  # the daemons it started stay in its process group

    def node_id(self, resource: str) -> str:
        return wait_for(lambda: next((n["NodeID"] for n in ray.nodes() if n["Alive"]
                                      and n["Resources"].get(resource)), None), timeout=60)

    def kill(self, name: str) -> None:
        """The node dies as a machine would: every process of it at once — its daemons (the process group `ray
        start` led) and everything they started (Ray's worker processes lead groups of their own)."""
        group = self.groups.pop(name)
        rows = [line.split() for line in subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True,
                                                        text=True).stdout.splitlines()]
        doomed = {int(pid) for pid, _, pgid in rows if int(pgid) == group}
        while True:  # and their descendants, at any depth
            more = {int(pid) for pid, ppid, _ in rows if int(ppid) in doomed} - doomed
            if not more:
                break
            doomed |= more
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for name in list(self.groups):
            try:
                os.killpg(self.groups[name], signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(2)
        for name in list(self.groups):
            self.kill(name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("ray"))
    try:
        c.start("head", {"head": 1, "trainer": 1}, head=True)
        c.start("node2", {"node2": 1, "trainer": 1})
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.stop()


def ray_server(tmp_path, cluster, **kw):
    return start_server("sqlite", tmp_path, auth=False, executor="ray", ray_address=cluster.address, **kw)


def new_job(client, tmp_path, n: int = 32, epochs: int | None = None):
    path = write_jsonl(tmp_path / "train.jsonl", [chat_record(*FACTS[i % 4]) for i in range(n)])
    f = client.files.create(file=open(path, "rb"), purpose="fine-tune")
    hyper = {**HYPER, "n_epochs": epochs or HYPER["n_epochs"]}
    return client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, seed=7, hyperparameters=hyper)


def events(client, job_id) -> list:
    return list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data))


def losses(client, job_id) -> dict[int, float]:
    return {e.data["step"]: e.data["train_loss"] for e in events(client, job_id)
            if e.type == "metrics" and "train_loss" in e.data}


def test_a_job_runs_on_the_node_that_has_its_resources(cluster, tmp_path):
    srv = ray_server(tmp_path, cluster, ray_resources={"node2": 1})
    try:
        c = srv.client()
        job = new_job(c, tmp_path)
        done = wait_status(c, job.id, ("succeeded", "failed", "cancelled"), timeout=400)
        assert done.status == "succeeded", done.error
        msgs = [e.message for e in events(c, job.id)]
        node2 = cluster.node_id("node2")
        assert f"Training on Ray node {node2}" in " ".join(msgs), msgs
        assert "127.0.0.1" not in " ".join(msgs)  # a tenant sees the node's id, never its address
        assert sorted(losses(c, job.id)) == list(range(1, 17))  # every step's metrics, once
        for m in ("Fine-tuning job started", "Files validated, moving job to queued state",
                  f"New fine-tuned model created: {done.fine_tuned_model}", "The job has successfully completed"):
            assert m in msgs
        start = json.loads((srv.settings.runs_dir / job.id / "starts.jsonl").read_text().splitlines()[-1])
        assert start["executor"] == "ray" and start["nodes"][0]["node_id"] == node2
        reply = c.chat.completions.create(model=done.fine_tuned_model, max_tokens=4,
                                          messages=[{"role": "user", "content": "What is your favorite fruit?"}])
        assert reply.choices[0].message.content
    finally:
        srv.stop()


def test_a_job_the_cluster_cannot_hold_fails_at_once_naming_what_is_missing(cluster, tmp_path):
    srv = ray_server(tmp_path, cluster, ray_resources={"a100": 1})
    try:
        c = srv.client()
        job = new_job(c, tmp_path)
        done = wait_status(c, job.id, ("succeeded", "failed", "cancelled"), timeout=120)
        assert done.status == "failed" and done.error.code == "executor_failed"
        assert "a100 1" in done.error.message and "0 node(s)" in done.error.message
        # what the job asked for, not the cluster's address, nodes or inventory (those go to the server's log)
        assert cluster.address not in done.error.message and "127.0.0.1" not in done.error.message
        assert cluster.node_id("head")[:12] not in done.error.message
    finally:
        srv.stop()


def test_a_two_node_ddp_job_follows_the_one_process_run(cluster, tmp_path):
    local = start_server("sqlite", tmp_path / "local", auth=False)
    try:
        c = local.client()
        ref_job = wait_status(c, new_job(c, tmp_path).id, ("succeeded", "failed"), timeout=400)
        assert ref_job.status == "succeeded", ref_job.error
        ref = losses(c, ref_job.id)
    finally:
        local.stop()
    srv = ray_server(tmp_path / "ray", cluster, job_nnodes=2)
    try:
        c = srv.client()
        job = new_job(c, tmp_path)
        done = wait_status(c, job.id, ("succeeded", "failed", "cancelled"), timeout=500)
        assert done.status == "succeeded", done.error
        placed = next(e.message for e in events(c, job.id) if e.message.startswith("Training on 2 Ray nodes"))
        assert cluster.node_id("head") in placed and cluster.node_id("node2") in placed
        got = losses(c, job.id)
        assert sorted(got) == sorted(ref)  # the global batch (4) split over the two nodes: the same steps
        for step in ref:
            assert got[step] == pytest.approx(ref[step], rel=REL_TOL), step
        config = (srv.settings.runs_dir / job.id / "run" / "config.yaml").read_text()
        assert "nnodes: 2" in config and "batch_size: 2" in config
        # the adapter is plain PEFT
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from slmtune.models.registry import resolve

        base = AutoModelForCausalLM.from_pretrained(str(resolve("tiny-llama")), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(srv.settings.runs_dir / job.id / "run" / "adapter"))
        assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    finally:
        srv.stop()


def test_a_node_that_dies_mid_job_hands_the_job_to_another_node_which_resumes_it(cluster, tmp_path):
    """node2 is killed (every process of it) after the first checkpoint: the job goes back to the queue and the
    head, freed meanwhile, resumes it from that checkpoint; every step's metrics arrive exactly once."""
    srv = ray_server(tmp_path, cluster, ray_resources={"trainer": 1})
    head, node2 = cluster.node_id("head"), cluster.node_id("node2")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, resources={"trainer": 1})
    class Blocker:  # holds the head's "trainer" so the job lands on node2
        def ping(self):
            return True

    blocker = Blocker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
    assert ray.get(blocker.ping.remote(), timeout=60)
    try:
        c = srv.client()
        job = new_job(c, tmp_path, n=120, epochs=3)  # 30 steps an epoch, a checkpoint each epoch
        wait_for(lambda: any(f"Training on Ray node {node2}" in e.message for e in events(c, job.id)), timeout=240)
        wait_for(lambda: c.fine_tuning.jobs.checkpoints.list(job.id).data, timeout=300)
        wait_for(lambda: max(losses(c, job.id), default=0) >= 35, timeout=300)
        cluster.kill("node2")
        killed_at = max(losses(c, job.id))
        ray.kill(blocker)
        done = wait_status(c, job.id, ("succeeded", "failed", "cancelled"), timeout=500)
        assert done.status == "succeeded", done.error
        msgs = [e.message for e in events(c, job.id)]
        assert any(m.startswith("The node running the job was lost") for m in msgs), msgs
        assert any(f"Training on Ray node {head}" in m for m in msgs), msgs
        resumed = [m for m in msgs if m.startswith("Resuming from checkpoints/step-")]
        assert resumed and int(resumed[0].split("step-")[1].split()[0]) < killed_at
        assert sorted(losses(c, job.id)) == list(range(1, 91)), "every step's metrics exactly once"
        assert msgs.count("The job has successfully completed") == 1
    finally:
        srv.stop()
