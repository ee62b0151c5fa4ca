"""Files: stored on disk per project, metadata in the database. Knows nothing of HTTP."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, get_args

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from slmtune.data.formats import jsonl_lines, jsonl_records
from slmtune.paths import private_dir
from slmtune.service.db import FileRow, JobRow, new_id, now
from slmtune.service.errors import BadRequest, NotFound, TooLarge
from slmtune.service.schemas import FileObject, UploadPurpose
from slmtune.service.settings import Settings

UPLOAD_PURPOSES = set(get_args(UploadPurpose))


def _bad_line(filename: str, i: int, problem: str) -> BadRequest:
    return BadRequest(f"Invalid file format for fine-tuning: expected JSONL where every line is a JSON dictionary; "
                      f"{filename} line {i}: {problem}.", param="file", code="invalid_file_format")


def check_jsonl(stream, filename: str) -> int:
    """Syntax check at upload: UTF-8 (BOM allowed), every non-blank line a JSON object of at most
    ``MAX_LINE_BYTES``. ``stream`` is the stored file opened in binary mode, read a line at a time (the data layer's
    :func:`~slmtune.data.formats.jsonl_lines`). Returns the line count."""
    n = 0
    for i, obj in jsonl_records(jsonl_lines(stream)):
        if isinstance(obj, ValueError):
            problem = str(obj).removeprefix("invalid JSON: ")
            if problem == "not valid UTF-8 text":
                raise BadRequest(f"Invalid file format for fine-tuning: {filename} line {i} is not valid UTF-8.",
                                 param="file", code="invalid_file_format")
            raise _bad_line(filename, i, problem)
        if not isinstance(obj, dict):
            raise BadRequest(f"Invalid file format for fine-tuning: expected JSONL where every line is a JSON "
                             f"dictionary; {filename} line {i} is a {type(obj).__name__}.", param="file",
                             code="invalid_file_format")
        n += 1
    if n == 0:
        raise BadRequest(f"Invalid file format for fine-tuning: {filename} has no examples.", param="file",
                         code="invalid_file_format")
    return n


CHUNK = 1 << 20


def create_file(*, session: Session, settings: Settings, project: str, filename: str, purpose: str,
                source: BinaryIO) -> FileRow:
    """Store an upload read from ``source`` in chunks (never whole in memory), checked before its row commits."""
    if purpose not in UPLOAD_PURPOSES:
        raise BadRequest(f"Invalid purpose {purpose!r}; expected one of {', '.join(sorted(UPLOAD_PURPOSES))}.",
                         param="purpose")
    if purpose == "fine-tune" and not filename.endswith(".jsonl"):
        raise BadRequest(f"Invalid file format for fine-tuning: {filename!r} must be a .jsonl file.", param="file",
                         code="invalid_file_format")
    file_id, path, tmp = _new_path(settings, project)
    size = 0
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise TooLarge(f"File is larger than the limit of {settings.max_upload_bytes} bytes.",
                                   param="file", code="file_too_large")
                out.write(chunk)
        if purpose == "fine-tune":
            with open(tmp, "rb") as fh:
                check_jsonl(fh, filename)
        check_quota(session, settings, project, size)
        tmp.replace(path)  # the row is only committed after the bytes are on disk
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _add_row(session, file_id, project, filename, purpose, size, path)


def storage_used(session: Session, project: str) -> int:
    """Bytes a project keeps on the server: its files (uploads, result files) and its jobs' run folders (data
    copies, checkpoints, adapters; a failed job's or a deleted model's folder is removed, so it no longer counts)."""
    files = session.scalar(select(func.coalesce(func.sum(FileRow.bytes), 0)).where(
        FileRow.project_id == project, FileRow.deleted.is_(False)))
    runs = session.scalars(select(JobRow.run_dir).where(JobRow.project_id == project, JobRow.run_dir.is_not(None)))
    return int(files) + sum(folder_bytes(Path(r)) for r in runs)


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):  # a checkpoint being rotated away meanwhile
                total += os.lstat(os.path.join(root, n)).st_size
    return total


def check_quota(session: Session, settings: Settings, project: str, size: int, *, param: str = "file") -> None:
    """``--max-storage-mb``: what the project keeps (:func:`storage_used`) plus ``size`` more must fit. Checked
    before an upload is stored and before a job is created. Two requests racing may both pass (the quota is a guard
    against runaway use, not an accounting ledger)."""
    if not settings.max_storage_bytes:
        return
    used = storage_used(session, project)
    if used + size > settings.max_storage_bytes:
        what = f"this file is {size} bytes" if size else "a new job needs room for its checkpoints"
        raise TooLarge(f"Storage quota exceeded: this project keeps {used} bytes (files and job runs), {what} and "
                       f"the quota is {settings.max_storage_bytes} bytes; delete files or fine-tuned models you no "
                       "longer need.", param=param, code="storage_quota_exceeded")


def store_file(*, session: Session, settings: Settings, project: str, filename: str, purpose: str,
               content: bytes) -> FileRow:
    """A file the service writes itself (result files)."""
    file_id, path, tmp = _new_path(settings, project)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(content)
    tmp.replace(path)  # the row is only committed after the bytes are on disk
    return _add_row(session, file_id, project, filename, purpose, len(content), path)


def _new_path(settings: Settings, project: str) -> tuple[str, Path, Path]:
    """A new file id, its final path, and the ``.part`` path its bytes are written to first."""
    file_id = new_id("file-")
    path = settings.files_dir / project / file_id
    private_dir(path.parent)
    return file_id, path, path.with_suffix(".part")


def _add_row(session: Session, file_id: str, project: str, filename: str, purpose: str, size: int,
             path: Path) -> FileRow:
    row = FileRow(id=file_id, project_id=project, filename=Path(filename).name or "upload", purpose=purpose,
                  bytes=size, status="processed", created_at=now(), path=str(path))
    session.add(row)
    session.flush()
    return row


def get_file(*, session: Session, project: str, file_id: str, param: str = "id") -> FileRow:
    row = session.scalar(select(FileRow).where(FileRow.id == file_id, FileRow.project_id == project,
                                               FileRow.deleted.is_(False)))
    if row is None:
        raise NotFound("file", file_id, param=param)
    return row


def list_files(*, session: Session, project: str, purpose: str | None, limit: int, order: str,
               after: str | None) -> tuple[list[FileRow], bool]:
    q = select(FileRow).where(FileRow.project_id == project, FileRow.deleted.is_(False))
    if purpose:
        q = q.where(FileRow.purpose == purpose)
    if after:
        anchor = get_file(session=session, project=project, file_id=after, param="after")
        q = q.where(FileRow.seq < anchor.seq if order == "desc" else FileRow.seq > anchor.seq)
    q = q.order_by(FileRow.seq.desc() if order == "desc" else FileRow.seq.asc()).limit(limit + 1)
    rows = list(session.scalars(q))
    return rows[:limit], len(rows) > limit


def delete_file(*, session: Session, project: str, file_id: str) -> None:
    row = get_file(session=session, project=project, file_id=file_id)
    row.deleted = True
    Path(row.path).unlink(missing_ok=True)


def to_public(row: FileRow) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose, status=row.status, expires_at=row.expires_at,
                      status_details=row.status_details)
