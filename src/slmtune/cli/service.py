"""`slmtune serve` and `slmtune worker`, and what the service's command groups (keys, db) share: --db, the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmtune.cli.common import err, fail
from slmtune.service.settings import MiB, Settings


def setting(name: str, *decls: str, per: int = 1, **kw):
    """A flag for ``Settings.<name>``, its help and shown default taken from that one definition (``per``: the
    flag's unit in the setting's, e.g. MiB for a --...-mb flag). Left out, the setting comes from its environment
    variable (``SLMTUNE_<NAME>``) or its default."""
    field = Settings.model_fields[name]
    default = field.default if field.default_factory is None else None  # a factory's default is said in words
    shown = f", default {default // per if per > 1 else default}" if default not in (None, False) else ""
    text = f"{field.description} (env SLMTUNE_{name.upper()}{shown})".replace("[", "\\[")  # not rich markup
    return typer.Option(*decls, help=text, show_default=False, **kw)


DbOpt = Annotated[str | None, setting("db_url", "--db")]
DataDirOpt = Annotated[Path | None, setting("data_dir", "--data-dir")]
LeaseOpt = Annotated[float | None, setting("lease_seconds", min=0.01)]
JobNprocOpt = Annotated[int | None, setting("job_nproc", min=1)]
ExecutorOpt = Annotated[str | None, setting("executor")]
RayAddressOpt = Annotated[str | None, setting("ray_address")]
RayCpusOpt = Annotated[float | None, setting("ray_cpus", min=0.01)]
RayGpusOpt = Annotated[float | None, setting("ray_gpus", min=0)]
RayMemoryOpt = Annotated[float | None, setting("ray_memory_mb")]
RayResourcesOpt = Annotated[str | None, setting("ray_resources")]
JobNnodesOpt = Annotated[int | None, setting("job_nnodes", min=1)]
StorageOpt = Annotated[str | None, setting("storage")]
MigrateOpt = Annotated[bool, setting("migrate", "--migrate")]


def executor_settings(executor: str | None, ray_address: str | None, ray_cpus: float | None, ray_gpus: float | None,
                      ray_memory_mb: float | None, ray_resources: str | None, job_nnodes: int | None,
                      storage: str | None) -> dict:
    """The executor's settings from the flags given; exit 2 naming the flag that is wrong."""
    import json

    resources = None
    if ray_resources is not None:
        try:
            resources = json.loads(ray_resources)
            if not isinstance(resources, dict) or not all(isinstance(v, (int, float)) for v in resources.values()):
                raise ValueError("expected a JSON object of resource name → amount")
        except ValueError as e:
            fail(f"--ray-resources {ray_resources}: {e}", 2)
    return given(executor=executor, ray_address=ray_address, ray_cpus=ray_cpus, ray_gpus=ray_gpus,
                 ray_memory_mb=ray_memory_mb, ray_resources=resources, job_nnodes=job_nnodes, storage=storage)


def mib(mb: int | None) -> int | None:
    return mb * MiB if mb is not None else None


def given(**flags) -> dict:
    """The flags the user gave (the others leave their setting to the environment or its default)."""
    return {k: v for k, v in flags.items() if v is not None}


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
    from slmtune.service import migrations
    from slmtune.service.db import Database

    database = Database(url)
    try:
        done = migrations.ensure(url, migrate=migrate)
    except migrations.SchemaError as e:
        fail(f"database {shown(url)}: {e}", 2)
    if "created" in done or "upgraded" in done or "stamped" in done:
        err.print(f"database {shown(url)}: {done}")
    return database


def shown(url: str) -> str:
    return url.split("@")[-1]


def settings_for(db: str | None, data_dir: Path | None = None, **kw) -> Settings:
    return Settings(**given(db_url=db, data_dir=data_dir), **kw)


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
    workers: Annotated[int, typer.Option(help="Job workers run inside the server process.")] = 1,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Run no worker here (use `slmtune worker`).")] = False,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Single-user mode: no API key, project 'default' "
                                          "(env SLMTUNE_AUTH=false).")] = False,
    max_upload_mb: Annotated[int | None, setting("max_upload_bytes", per=MiB, min=1)] = None,
    max_body_mb: Annotated[int | None, setting("max_body_bytes", per=MiB, min=1)] = None,
    body_timeout: Annotated[float | None, setting("body_timeout", min=0.1)] = None,
    allowed_hosts: Annotated[list[str] | None, typer.Option("--allowed-hosts", help="With --no-auth: a Host name "
                                                            "(and web-page origin) to serve besides the loopback "
                                                            "names (repeatable; '*' for any).")] = None,
    max_connections: Annotated[int, typer.Option(help="Open connections served at once; past it 503 (with "
                                                 "the body cap, what bounds the memory clients can hold).",
                                                 min=1)] = 1024,
    api_docs: Annotated[bool, setting("api_docs", "--api-docs")] = False,
    max_active_jobs: Annotated[int | None, setting("max_active_jobs_per_project", min=1)] = None,
    rate_limit: Annotated[int | None, setting("rate_limit_rpm", min=0)] = None,
    max_storage_mb: Annotated[int | None, setting("max_storage_bytes", per=MiB, min=0)] = None,
    lease_seconds: LeaseOpt = None,
    job_nproc: JobNprocOpt = None,
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="Allow --no-auth on an address other "
                                                   "than loopback (anyone who reaches it acts as project "
                                                   "'default').")] = False,
    onnx: Annotated[list[str] | None, typer.Option("--onnx", help="Serve an exported ONNX model as NAME "
                                                   "(NAME=DIR from `slmtune export onnx`; repeatable).")] = None,
    adapter: Annotated[list[str] | None, typer.Option("--adapter", help="Serve a tuned model trained outside the "
                                                      "service as NAME (NAME=DIR: a run dir or adapter folder; "
                                                      "repeatable). LoRA adapters share their base's batch.")] = None,
    max_running: Annotated[int | None, setting("max_running", min=1)] = None,
    max_queued: Annotated[int | None, setting("max_queued", min=0)] = None,
    max_queued_per_project: Annotated[int | None, setting("max_queued_per_project", min=1)] = None,
    adapter_cache: Annotated[int | None, setting("adapter_cache_size", min=1)] = None,
    precision: Annotated[str | None, setting("serve_precision")] = None,
    decode: Annotated[str | None, setting("serve_decode")] = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    ray_cpus: RayCpusOpt = None,
    ray_gpus: RayGpusOpt = None,
    ray_memory_mb: RayMemoryOpt = None,
    ray_resources: RayResourcesOpt = None,
    job_nnodes: JobNnodesOpt = None,
    storage: StorageOpt = None,
    migrate: MigrateOpt = False,
) -> None:
    """Run the OpenAI-compatible fine-tuning API (files, jobs, events, checkpoints, models, chat) under /v1."""
    import uvicorn

    from slmtune.artifacts import is_onnx_dir
    from slmtune.service.app import create_app
    from slmtune.service.settings import LOOPBACK_HOSTS

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
        settings = settings_for(db, data_dir, allowed_hosts=hosts, onnx_models=onnx_models,
                                local_adapters=local_adapters, **given(
                                    auth=False if no_auth else None, max_upload_bytes=mib(max_upload_mb),
                                    max_body_bytes=mib(max_body_mb), body_timeout=body_timeout,
                                    api_docs=api_docs or None,
                                    max_queued_per_project=max_queued_per_project, max_running=max_running,
                                    max_queued=max_queued, adapter_cache_size=adapter_cache,
                                    serve_precision=precision, serve_decode=decode,
                                    max_active_jobs_per_project=max_active_jobs,
                                    lease_seconds=lease_seconds, job_nproc=job_nproc, rate_limit_rpm=rate_limit,
                                    max_storage_bytes=mib(max_storage_mb), migrate=migrate or None),
                                **executor_settings(executor, ray_address, ray_cpus, ray_gpus, ray_memory_mb,
                                                    ray_resources, job_nnodes, storage))
    except ValueError as e:
        fail(f"slmtune serve: {e}", 2)
    if not settings.auth and not insecure_no_auth and host not in LOOPBACK_HOSTS:
        fail(f"--no-auth on --host {host} would let anyone who reaches it use the service; bind 127.0.0.1, drop "
              "--no-auth (and create keys with `slmtune keys create`), or add --insecure-no-auth", 2)
    open_db(settings.db_url, settings.migrate).dispose()
    if not no_worker:
        check_executor(settings)
    err.print(f"slmtune serve: http://{host}:{port}/v1  db={shown(settings.db_url)}  "
              f"workers={0 if no_worker else workers}  executor={settings.executor}  "
              f"auth={'on' if settings.auth else 'off'}")
    # keep-alive 75 s (uvicorn's default is 5): a client reusing a connection the moment the server closes it as
    # idle gets a connection reset on a request it cannot safely retry (seen under load); load balancers idle out
    # at 60 s, so the server must keep connections longer than they do
    uvicorn.run(create_app(settings, workers=0 if no_worker else workers), host=host, port=port, log_level="warning",
                timeout_keep_alive=75, limit_concurrency=max_connections)


def worker(db: DbOpt = None, data_dir: DataDirOpt = None, lease_seconds: LeaseOpt = None,
           job_nproc: JobNprocOpt = None, executor: ExecutorOpt = None, ray_address: RayAddressOpt = None,
           ray_cpus: RayCpusOpt = None, ray_gpus: RayGpusOpt = None, ray_memory_mb: RayMemoryOpt = None,
           ray_resources: RayResourcesOpt = None, job_nnodes: JobNnodesOpt = None, storage: StorageOpt = None,
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
        settings = settings_for(db, data_dir, **given(lease_seconds=lease_seconds, job_nproc=job_nproc,
                                                       migrate=migrate or None),
                                **executor_settings(executor, ray_address, ray_cpus, ray_gpus, ray_memory_mb,
                                                    ray_resources, job_nnodes, storage))
    except ValueError as e:
        fail(f"slmtune worker: {e}", 2)
    check_executor(settings)
    w = Worker(settings, open_db(settings.db_url, settings.migrate))

    def stop(*_):  # first signal: checkpoint and hand the job back; a second: stop its training now
        if w.stop.is_set():
            w.kill_child()
        w.shutdown()

    _signal.signal(_signal.SIGTERM, stop)
    _signal.signal(_signal.SIGINT, stop)
    err.print(f"slmtune worker {w.id}: polling {shown(settings.db_url)}, executor {settings.executor}")
    w.run_forever()
