"""`slmtune serve` and `slmtune worker`, and what the service's command groups (keys, db) share: --db, the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmtune.cli.common import err, fail

DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: SQLite under $SLMTUNE_HOME/service; "
                                                       "postgresql://user@host/db for scale-out).")]


DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where uploads and job runs are stored "
                                                                     "(default $SLMTUNE_HOME/service).")]
LeaseOpt = Annotated[float, typer.Option(help="Seconds without a heartbeat before another worker takes a job over.")]
JobNprocOpt = Annotated[int, typer.Option(help="Processes per training job (DDP; the job's batch size is split "
                                          "over them).", min=1)]
ExecutorOpt = Annotated[str, typer.Option(help="Where jobs train: local (a child process of the worker) or ray (a "
                                         "node of the Ray cluster at --ray-address; pip install 'slmtune[ray]').")]
RayAddressOpt = Annotated[str | None, typer.Option(help="The Ray head's address, HOST:PORT as `ray start --head` "
                                                   "prints it.")]
RayCpusOpt = Annotated[float, typer.Option(help="CPUs per node of a job (Ray executor).", min=0.01)]
RayGpusOpt = Annotated[float, typer.Option(help="GPUs per node of a job (Ray executor).", min=0)]
RayMemoryOpt = Annotated[float | None, typer.Option(help="Memory per node of a job in MB (Ray executor; default: "
                                                    "the planner's estimate of the job's peak).")]
RayResourcesOpt = Annotated[str | None, typer.Option(help="Custom Ray resources per node of a job, as JSON, e.g. "
                                                     "'{\"a100\": 1}' (Ray executor).")]
JobNnodesOpt = Annotated[int, typer.Option(help="Nodes per job (Ray executor): DDP across them, the rendezvous "
                                           "filled in by slmtune.", min=1)]
StorageOpt = Annotated[str | None, typer.Option(help="Where job runs (checkpoints, adapters) are kept (default "
                                                "DATA_DIR/runs); with the Ray executor, a path every node sees.")]
MigrateOpt = Annotated[bool, typer.Option("--migrate", help="Upgrade an older database schema at start (back the "
                                          "database up first); without it start-up stops and says so.")]


def executor_settings(executor: str, ray_address: str | None, ray_cpus: float, ray_gpus: float,
                      ray_memory_mb: float | None, ray_resources: str | None, job_nnodes: int,
                      storage: str | None) -> dict:
    """The executor's settings from the flags; exit 2 naming the flag that is wrong."""
    import json

    try:
        resources = json.loads(ray_resources) if ray_resources else {}
        if not isinstance(resources, dict) or not all(isinstance(v, (int, float)) for v in resources.values()):
            raise ValueError("expected a JSON object of resource name → amount")
    except ValueError as e:
        fail(f"--ray-resources {ray_resources}: {e}", 2)
    return {"executor": executor, "ray_address": ray_address, "ray_cpus": ray_cpus, "ray_gpus": ray_gpus,
            "ray_memory_mb": ray_memory_mb, "ray_resources": resources, "job_nnodes": job_nnodes, "storage": storage}


def check_executor(settings) -> None:
    """With the Ray executor, connect now: Ray missing or nothing at --ray-address exits 2 at start, not on a job."""
    if settings.executor == "ray":
        from slmtune.service.ray_executor import RayUnavailable, connect

        try:
            connect(settings.ray_address)
        except RayUnavailable as e:
            fail(str(e), 2)


def open_db(url: str, migrate: bool = False):
    """The service database, its schema created or checked (``slmtune.service.migrations``); exit 2 with the reason."""
    from slmtune.service.db import Database
    from slmtune.service.migrations import SchemaError

    database = Database(url)
    try:
        done = database.ensure_schema(migrate)
    except SchemaError as e:
        fail(f"database {shown(url)}: {e}", 2)
    if "created" in done or "upgraded" in done or "stamped" in done:
        err.print(f"database {shown(url)}: {done}")
    return database


def shown(url: str) -> str:
    return url.split("@")[-1]


def settings_for(db: str | None, data_dir: Path | None = None, **kw):
    from slmtune.service.settings import Settings

    return Settings(**({"db_url": db} if db else {}), **({"data_dir": data_dir} if data_dir else {}), **kw)


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
    workers: Annotated[int, typer.Option(help="Job workers run inside the server process.")] = 1,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Run no worker here (use `slmtune worker`).")] = False,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Single-user mode: no API key, project 'default'.")
                       ] = False,
    max_upload_mb: Annotated[int, typer.Option(help="Largest accepted upload.")] = 512,
    max_body_mb: Annotated[int, typer.Option(help="Largest request body other than an upload (JSON: chat, jobs); "
                                             "past it 413.", min=1)] = 8,
    body_timeout: Annotated[float, typer.Option(help="Seconds a JSON body may take to arrive in full (and an "
                                                "upload between two chunks); past it 408.", min=0.1)] = 30.0,
    allowed_hosts: Annotated[list[str] | None, typer.Option("--allowed-hosts", help="With --no-auth: a Host name "
                                                            "(and web-page origin) to serve besides the loopback "
                                                            "names (repeatable; '*' for any).")] = None,
    max_connections: Annotated[int, typer.Option(help="Open connections served at once; past it 503 (with "
                                                 "the body cap, what bounds the memory clients can hold).",
                                                 min=1)] = 1024,
    api_docs: Annotated[bool, typer.Option("--api-docs", help="Serve /docs and /redoc (their pages load their "
                                           "scripts from a CDN).")] = False,
    max_active_jobs: Annotated[int, typer.Option(help="Active (not finished) jobs per project.")] = 8,
    rate_limit: Annotated[int, typer.Option(help="Requests a minute per API key (bursts up to as many); past it "
                                            "429 with Retry-After. 0: no limit.", min=0)] = 3000,
    max_storage_mb: Annotated[int, typer.Option(help="Megabytes a project keeps (uploads, result files and its "
                                                "jobs' runs: checkpoints, adapters); past it an upload or a new "
                                                "job gets 413. 0: no quota.", min=0)] = 10240,
    lease_seconds: LeaseOpt = 30.0,
    job_nproc: JobNprocOpt = 1,
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="Allow --no-auth on an address other "
                                                   "than loopback (anyone who reaches it acts as project "
                                                   "'default').")] = False,
    onnx: Annotated[list[str] | None, typer.Option("--onnx", help="Serve an exported ONNX model as NAME "
                                                   "(NAME=DIR from `slmtune export onnx`; repeatable).")] = None,
    adapter: Annotated[list[str] | None, typer.Option("--adapter", help="Serve a tuned model trained outside the "
                                                      "service as NAME (NAME=DIR: a run dir or adapter folder; "
                                                      "repeatable). LoRA adapters share their base's batch.")] = None,
    max_running: Annotated[int, typer.Option(help="Chat sequences decoded together per model (its batch).")] = 32,
    max_queued: Annotated[int, typer.Option(help="Chat sequences waiting per model; past it a request gets 429 "
                                            "with Retry-After.")] = 128,
    max_queued_per_project: Annotated[int, typer.Option(help="Of those, one project's; past it that project's "
                                                        "chat gets 429 (other projects still get in).",
                                                        min=1)] = 64,
    adapter_cache: Annotated[int, typer.Option(help="LoRA adapters kept loaded per base model (LRU).")] = 8,
    precision: Annotated[str, typer.Option(help="Chat weights: auto (bf16 where the CPU/GPU has fast bf16), "
                                           "bf16 or fp32.")] = "auto",
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_cpus: RayCpusOpt = 1.0,
    ray_gpus: RayGpusOpt = 0.0,
    ray_memory_mb: RayMemoryOpt = None,
    ray_resources: RayResourcesOpt = None,
    job_nnodes: JobNnodesOpt = 1,
    storage: StorageOpt = None,
    migrate: MigrateOpt = False,
) -> None:
    """Run the OpenAI-compatible fine-tuning API (files, jobs, events, checkpoints, models, chat) under /v1."""
    import uvicorn

    from slmtune.artifacts import is_onnx_dir
    from slmtune.service.app import create_app
    from slmtune.service.settings import LOOPBACK_HOSTS

    if no_auth and not insecure_no_auth and host not in LOOPBACK_HOSTS:
        fail(f"--no-auth on --host {host} would let anyone who reaches it use the service; bind 127.0.0.1, drop "
              "--no-auth (and create keys with `slmtune keys create`), or add --insecure-no-auth", 2)
    onnx_models = {}
    for item in onnx or []:
        name, _, folder = item.partition("=")
        if not folder or not is_onnx_dir(folder):
            fail(f"--onnx {item}: expected NAME=DIR with DIR written by `slmtune export onnx`", 2)
        onnx_models[name] = folder
    local_adapters = {}
    for item in adapter or []:
        name, _, folder = item.partition("=")
        try:
            from slmtune.inference.generate import locate

            if not name or locate(folder).adapter_dir is None:
                raise ValueError("it holds no adapter")
        except Exception as e:  # noqa: BLE001 - any reason the folder is not an adapter: say it, exit 2
            fail(f"--adapter {item}: expected NAME=DIR with DIR a run directory or an adapter folder ({e})", 2)
        local_adapters[name] = folder
    try:
        hosts = [*LOOPBACK_HOSTS, *([host] if host not in ("0.0.0.0", "::") else []),
                 *(allowed_hosts or [])]
        settings = settings_for(db, data_dir, auth=not no_auth, max_upload_bytes=max_upload_mb * 1024 * 1024,
                             max_body_bytes=max_body_mb * 1024 * 1024, body_timeout=body_timeout,
                             allowed_hosts=hosts, api_docs=api_docs, max_queued_per_project=max_queued_per_project,
                             onnx_models=onnx_models, local_adapters=local_adapters, max_running=max_running,
                             max_queued=max_queued, adapter_cache_size=adapter_cache, serve_precision=precision,
                             max_active_jobs_per_project=max_active_jobs, lease_seconds=lease_seconds,
                             job_nproc=job_nproc,
                             rate_limit_rpm=rate_limit, max_storage_bytes=max_storage_mb * 1024 * 1024,
                             migrate=migrate, **executor_settings(executor, ray_address, ray_cpus, ray_gpus,
                                                                  ray_memory_mb, ray_resources, job_nnodes, storage))
    except ValueError as e:
        fail(f"slmtune serve: {e}", 2)
    open_db(settings.db_url, migrate).dispose()
    if not no_worker:
        check_executor(settings)
    err.print(f"slmtune serve: http://{host}:{port}/v1  db={shown(settings.db_url)}  "
              f"workers={0 if no_worker else workers}  executor={settings.executor}  auth={'off' if no_auth else 'on'}")
    # keep-alive 75 s (uvicorn's default is 5): a client reusing a connection the moment the server closes it as
    # idle gets a connection reset on a request it cannot safely retry (seen under load); load balancers idle out
    # at 60 s, so the server must keep connections longer than they do
    uvicorn.run(create_app(settings, workers=0 if no_worker else workers), host=host, port=port, log_level="warning",
                timeout_keep_alive=75, limit_concurrency=max_connections)


def worker(db: DbOpt = None, data_dir: DataDirOpt = None, lease_seconds: LeaseOpt = 30.0,
           job_nproc: JobNprocOpt = 1, executor: ExecutorOpt = "local", ray_address: RayAddressOpt = None,
           ray_cpus: RayCpusOpt = 1.0, ray_gpus: RayGpusOpt = 0.0, ray_memory_mb: RayMemoryOpt = None,
           ray_resources: RayResourcesOpt = None, job_nnodes: JobNnodesOpt = 1, storage: StorageOpt = None,
           migrate: MigrateOpt = False) -> None:
    """Run a job worker against the service database (more workers = more jobs at once).

    Workers on other machines need the same --db and a --data-dir they share with the server (e.g. NFS). With
    --executor ray the worker runs each job on a node of the Ray cluster (docs/scale-out.md).
    SIGTERM or Ctrl-C: the running job saves a checkpoint and goes back to the queue (another worker resumes it);
    a second signal stops its training at once.
    """
    import signal as _signal

    from slmtune.service.worker import Worker

    try:
        settings = settings_for(db, data_dir, lease_seconds=lease_seconds, job_nproc=job_nproc,
                                **executor_settings(executor, ray_address, ray_cpus, ray_gpus, ray_memory_mb,
                                                    ray_resources, job_nnodes, storage))
    except ValueError as e:
        fail(f"slmtune worker: {e}", 2)
    check_executor(settings)
    w = Worker(settings, open_db(settings.db_url, migrate))

    def stop(*_):  # first signal: checkpoint and hand the job back; a second: stop its training now
        if w.stop.is_set():
            w.kill_child()
        w.shutdown()

    _signal.signal(_signal.SIGTERM, stop)
    _signal.signal(_signal.SIGINT, stop)
    err.print(f"slmtune worker {w.id}: polling {shown(settings.db_url)}, executor {settings.executor}")
    w.run_forever()
