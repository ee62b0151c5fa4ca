from __future__ import annotations

from fastapi import APIRouter, Request

from slmtune.service import graders
from slmtune.service.deps import ProjectDep, SessionDep, SettingsDep
from slmtune.service.schemas import GraderRunRequest, GraderRunResponse, GraderValidateRequest, GraderValidateResponse

router = APIRouter(tags=["graders"])


@router.post("/fine_tuning/alpha/graders/run", response_model=GraderRunResponse)
def run_grader(req: GraderRunRequest, request: Request, session: SessionDep, settings: SettingsDep,
               project: ProjectDep) -> GraderRunResponse:
    """Score one model sample against one item with a grader: the reward, each sub-grader's, and what went wrong
    (docs/rft.md)."""
    return graders.run_grader(session=session, settings=settings, project=project,
                              server=request.app.state.inference, req=req)


@router.post("/fine_tuning/alpha/graders/validate", response_model=GraderValidateResponse)
def validate_grader(req: GraderValidateRequest, project: ProjectDep) -> GraderValidateResponse:
    """Check a grader without running it on a sample: templates, the multi grader's formula, and a python grader's
    source defined in its sandbox; 400 naming the first problem."""
    return GraderValidateResponse(grader=graders.validate_grader(req.grader))
