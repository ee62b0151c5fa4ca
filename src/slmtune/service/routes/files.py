from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from slmtune.service import file_checks, files
from slmtune.service.deps import ProjectDep, SessionDep, SettingsDep, committed
from slmtune.service.schemas import (
    Deleted,
    FileCheck,
    FileList,
    FileObject,
    ScenarioName,
    UploadPurpose,
    error_responses,
)

router = APIRouter(tags=["files"])


@router.post("/files", response_model=FileObject, responses=error_responses(413))
async def upload_file(session: SessionDep, settings: SettingsDep, project: ProjectDep,
                      file: Annotated[UploadFile, File()], purpose: Annotated[UploadPurpose, Form()]) -> FileObject:
    """Upload a file; fine-tune files must be JSONL (checked line by line, 400 naming the bad line)."""
    # copied from Starlette's spooled upload in chunks and checked on a worker thread, not on the event loop
    def store():
        return committed(session, files.create_file(session=session, settings=settings, project=project,
                                                    filename=file.filename or "upload", purpose=purpose,
                                                    source=file.file))

    row = await run_in_threadpool(store)
    return files.to_public(row)


@router.get("/files", response_model=FileList)
def list_files(session: SessionDep, project: ProjectDep, purpose: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 10000, order: Literal["asc", "desc"] = "desc",
               after: str | None = None) -> FileList:
    """List files, newest first by default."""
    rows, more = files.list_files(session=session, project=project, purpose=purpose, limit=limit, order=order,
                                  after=after)
    data = [files.to_public(r) for r in rows]
    return FileList(data=data, has_more=more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.get("/files/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, session: SessionDep, project: ProjectDep) -> FileObject:
    """One file's metadata."""
    return files.to_public(files.get_file(session=session, project=project, file_id=file_id))


@router.get("/files/{file_id}/content", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                 "format": "binary"}}}}})
def file_content(file_id: str, session: SessionDep, project: ProjectDep) -> Response:
    """The file's bytes (result files are base64-encoded CSV, as OpenAI serves them)."""
    row = files.get_file(session=session, project=project, file_id=file_id)
    return FileResponse(row.path, media_type="application/octet-stream")  # streamed from disk


@router.get("/slmtune/files/{file_id}/check", response_model=FileCheck)
def check_file(file_id: str, session: SessionDep, settings: SettingsDep, project: ProjectDep,
               model: Annotated[str, Query(min_length=1, max_length=200)],
               max_seq_length: Annotated[int, Query(ge=16, le=131072)] = 1024,
               preview: Annotated[int, Query(ge=0, le=20)] = 3,
               scenario: Annotated[ScenarioName | None, Query(description="The file holds this scenario's "
                                                               "records (as for a job's `scenario`).")] = None
               ) -> FileCheck:
    """slmtune extra: the checks of `slmtune data validate` for one base model (every problem with its line and
    field), token statistics, and the first examples as rendered for training with the loss-carrying text marked."""
    return file_checks.check_stored_file(session=session, settings=settings, project=project, file_id=file_id,
                                         model=model, max_seq_length=max_seq_length, preview=preview,
                                         scenario=scenario)


@router.delete("/files/{file_id}", response_model=Deleted)
def delete_file(file_id: str, session: SessionDep, project: ProjectDep) -> Deleted:
    """Delete a file (jobs that already started keep their own copy)."""
    committed(session, files.delete_file(session=session, project=project, file_id=file_id))
    return Deleted(id=file_id, object="file")
