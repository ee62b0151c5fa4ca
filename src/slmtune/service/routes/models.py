from __future__ import annotations

from fastapi import APIRouter

from slmtune.service import models
from slmtune.service.deps import ProjectDep, SessionDep, SettingsDep, committed
from slmtune.service.schemas import Deleted, ModelList, ModelObject

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(session: SessionDep, settings: SettingsDep, project: ProjectDep) -> ModelList:
    """Base models, and the project's fine-tuned models and checkpoints."""
    return ModelList(data=models.list_models(session=session, settings=settings, project=project))


@router.get("/models/{model_id:path}", response_model=ModelObject)
def retrieve_model(model_id: str, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> ModelObject:
    """One model."""
    return models.get_model(session=session, settings=settings, project=project, model_id=model_id)


@router.delete("/models/{model_id:path}", response_model=Deleted)
def delete_model(model_id: str, session: SessionDep, project: ProjectDep) -> Deleted:
    """Delete a fine-tuned model of this project (base models cannot be deleted)."""
    committed(session, models.delete_model(session=session, project=project, model_id=model_id))
    return Deleted(id=model_id, object="model")
