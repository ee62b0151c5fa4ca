"""Request dependencies: one database session per request, and the caller's project from the API key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from slmtune.service.errors import Unauthorized
from slmtune.service.gate import PROJECT_KEY
from slmtune.service.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as s:
        yield s


SettingsDep = Annotated[Settings, Depends(get_settings)]
# scope="function": the commit happens before the response is sent, so what a create/delete answered is what the
# next request reads (with the default "request" scope the commit ran after the response: a read-after-write race)
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def committed(session: Session, value):
    """Commit now, on the route's own thread, and return ``value``: a write route ends its transaction as soon as
    its work is done. Left to the session dependency, the commit would come after the response is validated on
    another thread hop, and on SQLite the write lock would be held meanwhile (every other writer waiting on it)."""
    session.commit()
    return value


def get_project(request: Request,
                authorization: Annotated[str | None, Header(description="Bearer API key")] = None) -> str:
    """The caller's project, as the :class:`~slmtune.service.gate.Gate` found it from the key (and rate-limited)
    before the body was read. ``authorization`` is declared for the OpenAPI document; the gate has read it."""
    project = request.scope.get(PROJECT_KEY)
    if project is None:  # a route outside /v1 asked for a project: nothing authenticated it
        raise Unauthorized("You didn't provide an API key. Send 'Authorization: Bearer YOUR_KEY'.")
    return project


ProjectDep = Annotated[str, Depends(get_project)]
