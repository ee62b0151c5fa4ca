"""Service settings, checked at startup."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from slmtune import paths

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the Host names a --no-auth server serves by default


def default_db_url() -> str:
    return f"sqlite:///{paths.home() / 'service' / 'slmtune.db'}"


@dataclass
class Settings:
    db_url: str = field(default_factory=default_db_url)
    data_dir: Path = field(default_factory=lambda: paths.home() / "service")
    auth: bool = True
    default_project: str = "default"  # used when auth is off
    max_upload_bytes: int = 512 * 1024 * 1024
    max_body_bytes: int = 8 * 1024 * 1024  # any other request body (JSON): read whole before a slot is taken
    body_timeout: float = 30.0  # seconds for a JSON body to arrive in full; for an upload, between two chunks
    allowed_hosts: list = field(default_factory=lambda: list(LOOPBACK_HOSTS))  # Host names --no-auth serves
    api_docs: bool = False  # /docs and /redoc (their pages load scripts from a CDN)
    min_examples: int = 10
    max_examples: int = 100_000
    max_active_jobs_per_project: int = 8
    api_threads: int = 32  # threads serving the API's sync routes (each may hold a database connection)
    rate_limit_rpm: int = 3000  # requests a minute per API key (bursts up to as many); 0 turns the limit off
    max_storage_bytes: int = 10 * 1024**3  # bytes a project keeps (files and job runs); 0: no quota
    job_nproc: int = 1
    onnx_models: dict = field(default_factory=dict)  # name → folder from `slmtune export onnx` (runtime: onnx)
    local_adapters: dict = field(default_factory=dict)  # name → run dir / adapter folder trained outside the service
    adapter_cache_size: int = 8  # LoRA adapters kept loaded per base model (LRU)
    max_running: int = 32  # sequences decoded together per model; more wait in its queue
    max_queued: int = 128  # sequences waiting per model; past this a chat request gets 429 + Retry-After
    max_queued_per_project: int = 64  # of those, one project's; past it that project's chat gets 429
    serve_precision: str = "auto"  # chat weights: bf16 where the CPU/GPU has fast bf16, else fp32
    lease_seconds: float = 30.0
    storage: Path | None = None  # where job runs (checkpoints, adapters) go; default DATA_DIR/runs
    executor: str = "local"  # local: a child process on the worker's machine; ray: a node of a Ray cluster
    ray_address: str | None = None  # the head's GCS address, host:port
    ray_cpus: float = 1.0  # per node of a job
    ray_gpus: float = 0.0
    ray_memory_mb: float | None = None  # per node; None: the planner's estimate of the job's peak
    ray_resources: dict = field(default_factory=dict)  # custom Ray resources per node, e.g. {"a100": 1}
    job_nnodes: int = 1  # nodes per job (Ray executor): DDP across them, the rendezvous filled in by slmtune
    migrate: bool = False  # upgrade an older database schema at start (else start-up stops and says what to run)
    test_models: bool = field(default_factory=lambda: os.environ.get("SLMTUNE_TEST_MODELS") == "1")

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.db_url.startswith("postgres://"):
            self.db_url = "postgresql://" + self.db_url[len("postgres://"):]
        if self.db_url.startswith("postgresql://"):
            self.db_url = "postgresql+psycopg://" + self.db_url[len("postgresql://"):]
        if min(self.max_upload_bytes, self.max_body_bytes, self.lease_seconds, self.body_timeout) <= 0:
            raise ValueError("max_upload_bytes, max_body_bytes, body_timeout and lease_seconds must be positive")
        if self.max_queued_per_project < 1:
            raise ValueError("max_queued_per_project must be at least 1")
        if self.rate_limit_rpm < 0 or self.max_storage_bytes < 0:
            raise ValueError("rate_limit_rpm and max_storage_bytes must be 0 (off) or positive")
        if self.api_threads < 1:
            raise ValueError("api_threads must be at least 1")
        if self.max_running < 1 or self.max_queued < 0:
            raise ValueError("max_running must be at least 1 and max_queued at least 0")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be local or ray, not {self.executor!r}")
        if self.job_nnodes < 1 or (self.job_nnodes > 1 and self.executor != "ray"):
            raise ValueError("job_nnodes above 1 needs the Ray executor (--executor ray)")
        if self.ray_cpus <= 0 or self.ray_gpus < 0:
            raise ValueError("ray_cpus must be positive and ray_gpus at least 0")
        if self.storage is not None:
            if "://" in str(self.storage):
                raise ValueError(f"storage {self.storage}: URLs are not supported yet; mount the bucket (s3fs, "
                                 "gcsfuse, an NFS export) on every node and give the mount's path")
            self.storage = Path(self.storage)
        if self.serve_precision not in ("auto", "fp32", "bf16"):
            raise ValueError("serve_precision must be auto, fp32 or bf16")

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def runs_dir(self) -> Path:
        return self.storage if self.storage is not None else self.data_dir / "runs"
