from __future__ import annotations

import shutil

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from slmtune.service import project_models
from slmtune.service.deps import ProjectDep, SessionDep, SettingsDep, committed
from slmtune.service.schemas import Deleted, ModelList, ModelObject

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(session: SessionDep, settings: SettingsDep, project: ProjectDep) -> ModelList:
    """Base models, and the project's fine-tuned models and checkpoints."""
    return ModelList(data=project_models.list_models(session=session, settings=settings, project=project))


@router.get("/models/{model_id:path}", response_model=ModelObject)
def retrieve_model(model_id: str, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> ModelObject:
    """One model."""
    return project_models.get_model(session=session, settings=settings, project=project, model_id=model_id)


@router.get("/slmtune/models/{model_id:path}/adapter", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
def download_adapter(model_id: str, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> FileResponse:
    """slmtune extra: the adapter of a fine-tuned model or checkpoint as a zip (adapter_config.json and weights)."""
    path = project_models.adapter_archive(session=session, settings=settings, project=project, model_id=model_id)
    session.close()
    name = model_id.replace(":", "_").strip("_") + ".zip"
    return FileResponse(path, media_type="application/zip", filename=name,
                        background=BackgroundTask(shutil.rmtree, path.parent, ignore_errors=True))


@router.delete("/models/{model_id:path}", response_model=Deleted)
def delete_model(model_id: str, session: SessionDep, project: ProjectDep) -> Deleted:
    """Delete a fine-tuned model of this project (base models cannot be deleted)."""
    committed(session, project_models.delete_model(session=session, project=project, model_id=model_id))
    return Deleted(id=model_id, object="model")
