from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request

from slmtune.service import jobs
from slmtune.service.deps import ProjectDep, SessionDep, SettingsDep, committed
from slmtune.service.schemas import (
    CheckpointList,
    EventList,
    FineTuningJob,
    FineTuningJobCreate,
    JobList,
    JobPlan,
    JobPlanRequest,
)

router = APIRouter(tags=["fine-tuning"])
_META = re.compile(r"^metadata\[(.+)\]$")


@router.post("/fine_tuning/jobs", response_model=FineTuningJob)
def create_job(req: FineTuningJobCreate, session: SessionDep, settings: SettingsDep,
               project: ProjectDep) -> FineTuningJob:
    """Create a job; returns at once in `validating_files` (validation and training run in a worker)."""
    job = jobs.create_job(session=session, settings=settings, project=project, req=req)
    return jobs.to_public(committed(session, job))


@router.post("/slmtune/plan", response_model=JobPlan)
def plan_job(req: JobPlanRequest, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> JobPlan:
    """slmtune extra: a job body (the fields of `POST /fine_tuning/jobs`, plus `memory_limit_mb`) planned, not
    created: peak memory, tokens/s, steps, time, whether it fits and why not, with "auto" resolved."""
    return jobs.plan_job(session=session, settings=settings, project=project, req=req)


@router.get("/fine_tuning/jobs", response_model=JobList)
def list_jobs(request: Request, session: SessionDep, project: ProjectDep, after: str | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> JobList:
    """List jobs, newest first; filter with `metadata[key]=value` (or `metadata=null` for jobs without)."""
    meta = {m.group(1): v for k, v in request.query_params.items() if (m := _META.match(k))}
    null = request.query_params.get("metadata") == "null"
    rows, more = jobs.list_jobs(session=session, project=project, after=after, limit=limit, metadata=meta or None,
                                metadata_null=null)
    return JobList(data=[jobs.to_public(r) for r in rows], has_more=more)


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob)
def retrieve_job(job_id: str, session: SessionDep, project: ProjectDep) -> FineTuningJob:
    """One job."""
    return jobs.to_public(jobs.get_job(session=session, project=project, job_id=job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(job_id: str, session: SessionDep, project: ProjectDep) -> FineTuningJob:
    """Cancel a job that has not finished; training stops within seconds."""
    return jobs.to_public(committed(session, jobs.cancel_job(session=session, project=project, job_id=job_id)))


@router.post("/fine_tuning/jobs/{job_id}/pause", response_model=FineTuningJob)
def pause_job(job_id: str, session: SessionDep, project: ProjectDep) -> FineTuningJob:
    """Pause a running job: it saves a checkpoint, frees its worker and becomes `paused`."""
    return jobs.to_public(committed(session, jobs.pause_job(session=session, project=project, job_id=job_id)))


@router.post("/fine_tuning/jobs/{job_id}/resume", response_model=FineTuningJob)
def resume_job(job_id: str, session: SessionDep, project: ProjectDep) -> FineTuningJob:
    """Resume a paused job from its checkpoint."""
    return jobs.to_public(committed(session, jobs.resume_job(session=session, project=project, job_id=job_id)))


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=EventList)
def list_events(job_id: str, session: SessionDep, project: ProjectDep, after: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> EventList:
    """Job events, newest first; `after` pages toward older events."""
    rows, more = jobs.list_events(session=session, project=project, job_id=job_id, after=after, limit=limit)
    return EventList(data=[jobs.event_to_public(r) for r in rows], has_more=more)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(job_id: str, session: SessionDep, project: ProjectDep, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 10) -> CheckpointList:
    """Checkpoints (one per epoch, the newest 3 kept), newest first; each is usable as a chat model."""
    rows, more = jobs.list_checkpoints(session=session, project=project, job_id=job_id, after=after, limit=limit)
    data = [jobs.checkpoint_to_public(r) for r in rows]
    return CheckpointList(data=data, has_more=more, first_id=data[0].id if data else None,
                          last_id=data[-1].id if data else None)
