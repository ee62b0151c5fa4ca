"""Service settings: one definition per setting — its type, default, bounds and description — read from keyword
arguments (the flags of `slmtune serve` / `slmtune worker`, which take their help and defaults from here), else
from the environment (``SLMTUNE_<NAME>``, e.g. ``SLMTUNE_MAX_RUNNING=64``), else the default. Checked at startup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slmtune import paths

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the Host names a --no-auth server serves by default
MiB = 1024 * 1024


def default_db_url() -> str:
    return f"sqlite:///{paths.home() / 'service' / 'slmtune.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLMTUNE_", extra="forbid", validate_default=True)

    # where things live
    db_url: str = Field(default_factory=default_db_url,
                        description="Database URL (default: SQLite under $SLMTUNE_HOME/service; "
                        "postgresql://user@host/db for scale-out).")
    data_dir: Path = Field(default_factory=lambda: paths.home() / "service",
                           description="Where uploads and job runs are stored (default $SLMTUNE_HOME/service).")
    storage: Path | None = Field(None, description="Where job runs (checkpoints, adapters) are kept (default "
                                 "DATA_DIR/runs); with the Ray executor, a path every node sees.")
    migrate: bool = Field(False, description="Upgrade an older database schema at start (back the database up "
                          "first); without it start-up stops and says so.")
    # who may call, and what one call may cost
    auth: bool = Field(True, description="API keys required (off: single-user mode, every call is project "
                       "'default').")
    default_project: str = "default"  # the project of every call when auth is off
    allowed_hosts: list[str] = Field(default_factory=lambda: list(LOOPBACK_HOSTS),
                                     description="Host names (and web-page origins) a server without auth serves.")
    api_docs: bool = Field(False, description="Serve /docs and /redoc (their pages load their scripts from a CDN).")
    max_upload_bytes: int = Field(512 * MiB, gt=0, description="Largest accepted upload.")
    max_body_bytes: int = Field(8 * MiB, gt=0, description="Largest request body other than an upload (JSON: chat, "
                                "jobs); past it 413. Read whole before an admission slot is taken.")
    body_timeout: float = Field(30.0, gt=0, description="Seconds a JSON body may take to arrive in full (and an "
                                "upload between two chunks); past it 408.")
    rate_limit_rpm: int = Field(3000, ge=0, description="Requests a minute per API key (bursts up to as many); past "
                                "it 429 with Retry-After. 0: no limit.")
    max_storage_bytes: int = Field(10 * 1024 * MiB, ge=0, description="What a project keeps (uploads, result files "
                                   "and its jobs' runs: checkpoints, adapters); past it an upload or a new job gets "
                                   "413. 0: no quota.")
    api_threads: int = Field(32, ge=1, description="Threads serving the API's sync routes (each may hold a database "
                             "connection).")
    # jobs
    min_examples: int = 10
    max_examples: int = 100_000
    max_active_jobs_per_project: int = Field(8, ge=1, description="Active (not finished) jobs per project.")
    lease_seconds: float = Field(30.0, gt=0, description="Seconds without a heartbeat before another worker takes "
                                 "a job over.")
    job_nproc: int = Field(1, ge=1, description="Processes per training job (DDP; the job's batch size is split "
                           "over them).")
    executor: Literal["local", "ray"] = Field("local", description="Where jobs train: local (a child process of the "
                                              "worker) or ray (a node of the Ray cluster at ray_address; pip install "
                                              "'slmtune[ray]').")
    ray_address: str | None = Field(None, description="The Ray head's address, HOST:PORT as `ray start --head` "
                                    "prints it.")
    ray_cpus: float = Field(1.0, gt=0, description="CPUs per node of a job (Ray executor).")
    ray_gpus: float = Field(0.0, ge=0, description="GPUs per node of a job (Ray executor).")
    ray_memory_mb: float | None = Field(None, gt=0, description="Memory per node of a job in MB (Ray executor; "
                                        "default: the planner's estimate of the job's peak).")
    ray_resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per node of a "
                                            "job, e.g. {\"a100\": 1} (Ray executor).")
    job_nnodes: int = Field(1, ge=1, description="Nodes per job (Ray executor): DDP across them, the rendezvous "
                            "filled in by slmtune.")
    # chat
    onnx_models: dict[str, str] = Field(default_factory=dict, description="Exported ONNX models served by name "
                                        "(name → folder from `slmtune export onnx`).")
    local_adapters: dict[str, str] = Field(default_factory=dict, description="Tuned models trained outside the "
                                           "service, served by name (name → run dir or adapter folder).")
    adapter_cache_size: int = Field(8, ge=1, description="LoRA adapters kept loaded per base model (LRU).")
    max_running: int = Field(32, ge=1, description="Chat sequences decoded together per model (its batch).")
    max_queued: int = Field(128, ge=0, description="Chat sequences waiting per model; past it a request gets 429 "
                            "with Retry-After.")
    max_queued_per_project: int = Field(64, ge=1, description="Of those, one project's; past it that project's chat "
                                        "gets 429 (other projects still get in).")
    serve_precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="Chat weights: auto (bf16 where "
                                                             "the CPU/GPU has fast bf16), bf16 or fp32.")
    serve_decode: Literal["auto", "transformers", "fp16", "int8"] = Field(
        "auto", description="Chat decode step: auto (slmtune's lean step for Llama-style models, else transformers'; "
        "with precision auto, an fp32 model on a CPU without fast bf16 decodes with fp16 weights and fp32 sums), "
        "transformers, fp16 (the lean step with fp16 weights: half the bytes, close to fp32) or int8 (int8 "
        "weights: further from exact).")
    test_models: bool = Field(False, description="Offer the tiny in-process test models (tests only).")

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as e:  # one line per problem, naming the setting (a ValueError, as before)
            raise ValueError("; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: "
                                       f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors())) from None

    @field_validator("db_url")
    @classmethod
    def _driver(cls, url: str) -> str:
        """postgres:// and postgresql:// go through psycopg 3 (the driver slmtune ships)."""
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url

    @field_validator("storage", mode="before")
    @classmethod
    def _no_urls(cls, value):
        if value is not None and "://" in str(value):
            raise ValueError(f"{value}: URLs are not supported yet; mount the bucket (s3fs, gcsfuse, an NFS export) "
                             "on every node and give the mount's path")
        return value

    @model_validator(mode="after")
    def _nodes_need_ray(self) -> Settings:
        if self.job_nnodes > 1 and self.executor != "ray":
            raise ValueError("job_nnodes above 1 needs the Ray executor (--executor ray)")
        return self

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def runs_dir(self) -> Path:
        return self.storage if self.storage is not None else self.data_dir / "runs"
