"""Request dependencies: one database session per request, and the caller's project from the API key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from slmtune.service.auth import hash_key, project_for_key
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


def get_project(request: Request, settings: SettingsDep, session: SessionDep,
                authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's project (401 for a missing, unknown or expired key), after the key's rate limit (429)."""
    if not settings.auth:
        request.app.state.limiter.check(settings.default_project)
        return settings.default_project
    project = project_for_key(session, authorization)
    # End the key lookup's transaction: its connection goes back to the pool now. Held, it would wait with the
    # request for a free thread, and 200 waiting requests would hold every connection while the threads that
    # could finish them wait for one (seen as 60 s stalls and pool timeouts under load).
    session.commit()
    request.app.state.limiter.check(hash_key(authorization.split(" ", 1)[1].strip()))  # known keys only
    return project


ProjectDep = Annotated[str, Depends(get_project)]
