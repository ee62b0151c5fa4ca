"""Models a project can use: base models, its fine-tuned models and their checkpoints. No HTTP here."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from slmtune.artifacts import locate
from slmtune.models.registry import REGISTRY
from slmtune.service.db import CheckpointRow, JobRow, now
from slmtune.service.errors import BadRequest, NotFound
from slmtune.service.schemas import ModelObject
from slmtune.service.settings import Settings
from slmtune.service.states import JobStatus

_STARTED = now()


def list_models(*, session: Session, settings: Settings, project: str) -> list[ModelObject]:
    out = [ModelObject(id=m, created=_STARTED, owned_by="slmtune") for m in base_models(settings)]
    out += [ModelObject(id=m, created=_STARTED, owned_by="slmtune") for m in settings.onnx_models]
    out += [ModelObject(id=m, created=_STARTED, owned_by="slmtune") for m in settings.local_adapters]
    jobs = session.scalars(select(JobRow).where(JobRow.project_id == project, JobRow.status == JobStatus.SUCCEEDED,
                                                JobRow.model_deleted.is_(False)).order_by(JobRow.seq))
    for job in jobs:
        out.append(ModelObject(id=job.fine_tuned_model, created=job.finished_at or job.created_at,
                               owned_by=f"org-{project}"))
    ckpts = session.scalars(select(CheckpointRow).join(JobRow, JobRow.id == CheckpointRow.job_id)
                            .where(JobRow.project_id == project, JobRow.model_deleted.is_(False))
                            .order_by(CheckpointRow.seq))
    for c in ckpts:
        out.append(ModelObject(id=c.fine_tuned_model_checkpoint, created=c.created_at, owned_by=f"org-{project}"))
    return out


def get_model(*, session: Session, settings: Settings, project: str, model_id: str) -> ModelObject:
    for m in list_models(session=session, settings=settings, project=project):
        if m.id == model_id:
            return m
    raise NotFound("model", model_id, param="model")


def delete_model(*, session: Session, project: str, model_id: str) -> None:
    job = session.scalar(select(JobRow).where(JobRow.fine_tuned_model == model_id, JobRow.project_id == project,
                                              JobRow.model_deleted.is_(False)))
    if job is None:
        raise NotFound("model", model_id, param="model")
    job.model_deleted = True
    if job.run_dir:  # its adapter and checkpoints (their model ids go with it); the job's events and files stay
        shutil.rmtree(job.run_dir, ignore_errors=True)


@functools.lru_cache(maxsize=256)
def _local_adapter(folder: str) -> tuple[str, Path]:
    """(base id, adapter folder) of a run dir or adapter folder; read once, not on every chat request."""
    src = locate(folder)
    return src.base, src.adapter_dir


def base_models(settings: Settings) -> list[str]:
    """The base models this service fine-tunes and serves (the tiny test models with ``settings.test_models``)."""
    return [m for m, spec in REGISTRY.items() if spec.source != "tiny" or settings.test_models]


def resolve_for_chat(*, session: Session, settings: Settings, project: str,
                     model_id: str) -> tuple[str, tuple[str, Path] | None]:
    """(base model id, (adapter key, adapter folder) or None) for a chat request."""
    if model_id in base_models(settings):
        return model_id, None
    if model_id in settings.local_adapters:  # `slmtune serve --adapter NAME=DIR`
        base, adapter_dir = _local_adapter(str(settings.local_adapters[model_id]))
        return base, (model_id, adapter_dir)
    job = session.scalar(select(JobRow).where(JobRow.fine_tuned_model == model_id, JobRow.project_id == project,
                                              JobRow.model_deleted.is_(False), JobRow.status == JobStatus.SUCCEEDED))
    if job is not None:
        return job.model, (model_id, Path(job.run_dir) / "run" / "adapter")
    ckpt = session.scalar(select(CheckpointRow).join(JobRow, JobRow.id == CheckpointRow.job_id).where(
        CheckpointRow.fine_tuned_model_checkpoint == model_id, JobRow.project_id == project,
        JobRow.model_deleted.is_(False)))
    if ckpt is not None and Path(ckpt.path).exists():
        job = session.scalar(select(JobRow).where(JobRow.id == ckpt.job_id))
        return job.model, (model_id, Path(ckpt.path))
    raise NotFound("model", model_id, param="model")


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # all an adapter is; nothing pickled


def adapter_archive(*, session: Session, settings: Settings, project: str, model_id: str) -> Path:
    """A zip of the adapter of a fine-tuned model or checkpoint — ``adapter_config.json`` and the safetensors
    weights, loadable with ``PeftModel.from_pretrained`` after unzipping — written to a temporary file the caller
    deletes. A checkpoint's folder also holds the trainer's pickled optimizer, scheduler and RNG states and its
    arguments (with server paths): those stay on the server."""
    import tempfile
    import zipfile

    _, adapter = resolve_for_chat(session=session, settings=settings, project=project, model_id=model_id)
    if adapter is None:
        raise BadRequest(f"{model_id} is a base model: it has no adapter to download.", param="model",
                         code="model_not_fine_tuned")
    folder = adapter[1]
    if not (folder / "adapter_config.json").exists():
        raise NotFound("model", model_id, param="model")
    tmp = Path(tempfile.mkdtemp(prefix="slmtune-adapter-")) / "adapter.zip"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ADAPTER_FILES:
            if (folder / name).is_file():
                z.write(folder / name, name)
    return tmp
