"""The Ray executor: each claimed job's training runs on a node of a Ray cluster that has the job's resources.

The database stays the source of truth: the worker that claimed the job keeps its lease, watches cancel and pause,
and writes how the job ended, exactly as with the local executor. Only the training process moves: a Ray actor
(``_JobActor``), placed by a placement group with the job's bundle (CPUs, GPUs, the planner's memory estimate, any
custom resources), starts the same training child as the local executor (:func:`slmtune.service.runner.child_main`)
on its node; the child writes its events to the database itself and its checkpoints to the job's run directory,
which must be on storage every node sees (``--storage``). With ``job_nnodes > 1`` the bundles are spread over that
many nodes (``STRICT_SPREAD``) and each actor starts torchrun with the rendezvous filled in (node 0's address and a
free port found there): no manual ``node_rank``.

Cancel and pause reach the actor (SIGINT to the child's process group: checkpoint and stop; cancel kills the
actors). A node that dies takes its actor with it: the worker sees the actor die, puts the job back in the queue
(an attempt), and the next claim resumes it from its last checkpoint wherever Ray places it.

Ray is an optional extra (``pip install 'slmtune[ray]'``); this module is imported only when ``--executor ray``.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from slmtune.planner import plan
from slmtune.service.queue import JobRefused
from slmtune.service.runner import LocalRun
from slmtune.service.settings import Settings
from slmtune.service.states import ExitCode

# Environment the training child needs from the process that started the executor (a Ray worker inherits the
# environment of the node's `ray start`, not the driver's) — settings only: anything that names a secret stays
# home, and each node keeps its own (its `ray start` environment, ~/.pgpass for the database password).
FORWARDED_ENV_PREFIXES = ("SLMTUNE_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
SECRET_NAME_PARTS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH", "_DB", "DATABASE", "URL")
log = logging.getLogger("slmtune.ray")
PLACEMENT_NOTICE_S = 5.0  # after this long unplaced, the job says what it waits for


class RayUnavailable(RuntimeError):
    """Ray is not installed, nothing answers at the address, or the cluster can never hold the job."""


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable("--executor ray needs Ray: pip install 'slmtune[ray]' (or pip install ray)") from e
    return ray


def connect(address: str | None):
    """Connect this process to the cluster at ``address`` (host:port of the head's GCS, as ``ray start --head``
    prints it); a clear RayUnavailable, never a hang, when Ray is missing or nothing answers."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    if not address:
        raise RayUnavailable("--executor ray needs --ray-address HOST:PORT (the head node's address, as "
                             "`ray start --head` prints it)")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise RayUnavailable(f"no Ray cluster answers at {address} ({e}); start one with `ray start --head --port "
                             f"{port or 6379}` or give the head's address") from e
    ray.init(address=address, namespace="slmtune", log_to_driver=False, logging_level="warning",
             configure_logging=False)
    return ray


class _JobActor:
    """Runs on the node Ray chose: starts the training child there and relays signals to its process group.
    Threaded (``max_concurrency``) so that ``signal`` runs while ``run`` waits."""

    def __init__(self):
        self.child: LocalRun | None = None

    def where(self) -> dict:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        # the address the node joined the cluster with (what its peers reach it at: the rendezvous goes there)
        ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id),
                  ray.util.get_node_ip_address())
        return {"node_id": node_id, "ip": ip, "host": socket.gethostname(), "pid": os.getpid()}

    def free_port(self) -> int:
        from slmtune.training.distributed import free_port

        return free_port("")  # free on every interface of the node: its peers connect to its address

    def run(self, db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool) -> int:
        """The local executor's child, on this node; its exit code."""
        self.child = LocalRun(db_url, job_id, token, ft_name, cfg, resume)
        self.child.wait(None)
        return self.child.exitcode

    def signal(self, sig: int) -> None:
        if self.child is not None:
            self.child.signal(sig)


class RayExecutor:
    name = "ray"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ray = connect(settings.ray_address)
        self.actor_class = self.ray.remote(_JobActor)

    def bundle(self, cfg: dict) -> dict:
        """What one node of the job needs: CPUs, GPUs, memory (the planner's estimate, unless set), custom."""
        s = self.settings
        need = {"CPU": float(s.ray_cpus)}
        if s.ray_gpus:
            need["GPU"] = float(s.ray_gpus)
        memory_mb = s.ray_memory_mb
        if memory_mb is None:  # the planner's peak for the job's config on this node's share of the batch
            try:
                memory_mb = plan(cfg, nproc=s.job_nproc).peak_memory_mb
            except Exception:  # noqa: BLE001 - a job the planner cannot size still runs, without a memory request
                memory_mb = 0
        if memory_mb:
            need["memory"] = float(int(memory_mb * 1024 * 1024))
        return need | {k: float(v) for k, v in s.ray_resources.items()}

    def check_fits(self, need: dict, nodes: int) -> None:
        """Refuse at once (not a hang) when fewer than ``nodes`` alive nodes could ever hold ``need``."""
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        fit = [n for n in alive if all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items())]
        if len(fit) >= nodes:
            return
        have = "; ".join(f"{n['NodeID'][:12]} ({n.get('NodeManagerAddress')}): " + ", ".join(
            f"{k} {_amount(k, v)}" for k, v in sorted(n.get("Resources", {}).items())
            if not k.startswith(("node:", "object_store"))) for n in alive) or "no alive node"
        wanted = ", ".join(f"{k} {_amount(k, v)}" for k, v in need.items())
        # the tenant reads the job's error: what the job asked for, not the cluster's addresses and inventory
        log.warning("a job needs %s per node on %d node(s); the cluster at %s has %d such node(s): %s", wanted,
                    nodes, self.settings.ray_address, len(fit), have)
        raise JobRefused(f"the cluster has {len(fit)} node(s) with what the job needs per node ({wanted}), "
                         f"{nodes} needed; ask the service's operator for larger nodes or lower the job's needs")

    def start(self, db_url: str, job_id: str, token: int, ft_name: str, cfg: dict, resume: bool) -> RayRun:
        nodes = self.settings.job_nnodes
        need = self.bundle(cfg)
        self.check_fits(need, nodes)
        from ray.util.placement_group import placement_group

        pg = placement_group([need] * nodes, strategy="STRICT_SPREAD" if nodes > 1 else "PACK",
                             name=f"slmtune-{job_id}-{token}")
        return RayRun(self, pg, need, (db_url, job_id, token, ft_name), cfg, resume, nodes)


def _amount(key: str, value: float) -> str:
    return f"{value / 2**30:.1f} GB" if key == "memory" else f"{value:g}"


class RayRun:
    """A job on the cluster: placing (the placement group waits for resources) → running (one actor per node) →
    done. Driven by the worker's watch loop through the same calls as a local child."""

    def __init__(self, executor: RayExecutor, pg, need: dict, ids: tuple, cfg: dict, resume: bool, nodes: int):
        self.ray, self.executor, self.pg, self.need = executor.ray, executor, pg, need
        self.ids, self.cfg, self.resume, self.nodes = ids, cfg, resume, nodes
        self.actors: list = []
        self.refs: list = []
        self.where: list[dict] = []
        self.started = time.monotonic()
        self.notice_given = False
        self.killed = False
        self._code: int | None = None
        self._reported = False
        self._ready = None
        self.error: str | None = None

    # --- the stages ----------------------------------------------------------------------------------------------
    def _advance(self, timeout: float) -> None:
        if self._code is not None or self.killed:
            return
        if not self.refs:
            if self._ready is None:
                self._ready = self.pg.ready()
            ready, _ = self.ray.wait([self._ready], timeout=timeout)
            if ready:
                try:
                    self._launch()
                except self.ray.exceptions.RayError as e:  # an actor that could not start (its environment)
                    self.error = f"the Ray actor for the job could not start: {e}"
                    self._code = ExitCode.FAILED
                    self._release()
            return
        ready, _ = self.ray.wait(self.refs, num_returns=len(self.refs), timeout=timeout)
        if len(ready) == len(self.refs) or self._any_failed():
            self._finish()

    def _launch(self) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        env = forwarded_env(os.environ)
        for i in range(self.nodes):
            options = {"num_cpus": self.need["CPU"], "max_concurrency": 4, "max_restarts": 0,
                       "runtime_env": {"env_vars": env},
                       "scheduling_strategy": PlacementGroupSchedulingStrategy(self.pg, i)}
            if "GPU" in self.need:
                options["num_gpus"] = self.need["GPU"]
            self.actors.append(self.executor.actor_class.options(**options).remote())
        self.where = self.ray.get([a.where.remote() for a in self.actors])
        cfgs = [self.cfg]
        if self.nodes > 1:  # one torchrun per node, the rendezvous on node 0
            port = self.ray.get(self.actors[0].free_port.remote())
            cfgs = [_node_config(self.cfg, r, self.nodes, self.where[0]["ip"], port) for r in range(self.nodes)]
        db_url, job_id, token, ft_name = self.ids
        db_url = without_password(db_url)  # the node's libpq finds it (PGPASSWORD or ~/.pgpass of its ray start)
        self.refs = [a.run.remote(db_url, job_id, token, ft_name, c, self.resume) for a, c in zip(self.actors, cfgs)]

    def _any_failed(self) -> bool:
        """A node whose training ended badly while others still run: the rest would wait for it at the next
        collective until a timeout, so the job ends now."""
        ready, _ = self.ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        for ref in ready:
            if self._get(ref) != ExitCode.OK:
                return True
        return False

    def _get(self, ref) -> int:
        try:
            return int(self.ray.get(ref))
        except self.ray.exceptions.RayActorError:  # the actor died: its node was lost (or it was killed)
            return ExitCode.NODE_LOST
        except self.ray.exceptions.RayError:
            return ExitCode.FAILED

    def _finish(self) -> None:
        codes = [self._get(ref) for ref in self.refs] if self.refs else [ExitCode.FAILED]
        bad = [c for c in codes if c != ExitCode.OK]
        # node 0's code tells how the run ended (interrupted, failed); a lost node wins so the job is retried
        self._code = ExitCode.NODE_LOST if ExitCode.NODE_LOST in bad else (codes[0] if codes[0] != ExitCode.OK else
                                                                   (bad[0] if bad else ExitCode.OK))
        self._release()

    def _release(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone with its node
                pass
        try:
            self.ray.util.remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001 - the cluster forgets it with its nodes
            pass

    # --- what the worker calls -----------------------------------------------------------------------------------
    def alive(self) -> bool:
        self._advance(0)
        return self._code is None and not self.killed

    def wait(self, seconds: float) -> None:
        self._advance(seconds)

    def interrupt(self) -> None:
        for a in self.actors:
            a.signal.remote(signal.SIGINT)

    def kill(self) -> None:
        for a in self.actors:
            a.signal.remote(signal.SIGKILL)
        time.sleep(0.5)
        self.killed = True
        self._release()

    @property
    def exitcode(self) -> int | None:
        if self._code is None and self.killed:
            return -signal.SIGKILL
        return self._code

    def placement(self) -> str | None:
        """Once, when known: where the job runs (for the job's events); or, after a while unplaced, what it
        waits for."""
        if self.where and not self._reported:  # node ids only: addresses and host names stay in the server's log
            self._reported = True
            log.info("job %s placed: %s", self.ids[1], self.where)
            if self.nodes == 1:
                return f"Training on Ray node {self.where[0]['node_id']}"
            return f"Training on {self.nodes} Ray nodes: " + "; ".join(
                f"node {r}: Ray node {w['node_id']}" for r, w in enumerate(self.where))
        if not self.where and not self.notice_given and time.monotonic() - self.started > PLACEMENT_NOTICE_S:
            self.notice_given = True
            return ("Waiting for the Ray cluster to place the job (per node: " + ", ".join(
                f"{k} {_amount(k, v)}" for k, v in self.need.items()) + ")")
        return None

    def describe(self) -> dict | None:
        return {"executor": "ray", "nodes": self.where} if self.where else None


def forwarded_env(environ) -> dict[str, str]:
    """The settings a job's nodes get from the driver: the forwarded prefixes, less any name that may hold a secret
    (a token, a key, a password, a database URL)."""
    return {k: v for k, v in environ.items()
            if k.startswith(FORWARDED_ENV_PREFIXES) and not any(part in k.upper() for part in SECRET_NAME_PARTS)}


def without_password(url: str) -> str:
    """``scheme://user:password@host/db`` → ``scheme://user@host/db`` (other URLs unchanged)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}"))


def _node_config(cfg: dict, rank: int, nodes: int, master_addr: str, port: int) -> dict:
    """The job's config for node ``rank`` of a multi-node run. Node 0 writes the job's run directory; the others
    keep their launch files beside it (``JOB/nodes/R``) on the shared storage."""
    c = copy.deepcopy(cfg)
    d = c.setdefault("distributed", {})
    d.update(strategy=d.get("strategy", "ddp"), nproc=d.get("nproc", 1), nnodes=nodes, node_rank=rank,
             master_addr=master_addr, master_port=port)
    if rank:
        c["run"]["output"] = str(Path(c["run"]["output"]).parent / "nodes" / str(rank))
    return c
