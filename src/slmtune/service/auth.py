"""API keys: ``slmtune keys create --project NAME`` prints a key once; only its sha256 is stored."""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from slmtune.service.db import ApiKey, Project
from slmtune.service.errors import Unauthorized

PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_project(session: Session, project: str) -> Project:
    if not PROJECT_RE.match(project):
        raise ValueError(f"project name {project!r}: use 1-63 of a-z, 0-9, '_' and '-', "
                         "starting with a letter or digit")
    row = session.get(Project, project)
    if row is None:
        row = Project(id=project)
        session.add(row)
        session.flush()
    return row


def create_key(session: Session, project: str, expires_at: int | None = None) -> str:
    ensure_project(session, project)
    key = "sk-slm-" + secrets.token_urlsafe(32)
    session.add(ApiKey(key_hash=hash_key(key), project_id=project, prefix=key[:12], expires_at=expires_at))
    return key


_UNITS = {"m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90m``, ``12h``, ``30d`` → seconds (for ``slmtune keys create --expires-in``)."""
    m = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", text or "")
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r}: give a positive number of minutes, hours or days, e.g. 90m, 12h or 30d")
    return int(m.group(1)) * _UNITS[m.group(2)]


MAX_KEY_CHARS = 256  # longer is no key of ours: refused without a lookup


def bearer_key(authorization: str | None) -> str:
    """The key in an ``Authorization: Bearer KEY`` header, or 401 saying how to send one."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("You didn't provide an API key. Send 'Authorization: Bearer YOUR_KEY'.")
    key = authorization.split(" ", 1)[1].strip()
    if not key or len(key) > MAX_KEY_CHARS:
        raise Unauthorized("Incorrect API key provided.")
    return key


def project_for_key(session: Session, authorization: str | None) -> str:
    key = bearer_key(authorization)
    row = session.get(ApiKey, hash_key(key))
    if row is None:
        raise Unauthorized(f"Incorrect API key provided: {key[:10]}***.")
    if row.expires_at is not None and row.expires_at <= time.time():
        raise Unauthorized(f"The API key {key[:10]}*** expired on {utc_time(row.expires_at)}; create a new one.")
    return row.project_id


def utc_time(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def list_keys(session: Session, project: str | None = None) -> list[ApiKey]:
    q = select(ApiKey).order_by(ApiKey.created_at)
    if project:
        q = q.where(ApiKey.project_id == project)
    return list(session.scalars(q))


def revoke_key(session: Session, prefix: str) -> ApiKey:
    """Delete the key whose listed prefix (or the whole key) is ``prefix``; it stops working at once."""
    rows = [k for k in list_keys(session) if prefix.startswith(k.prefix) or k.prefix.startswith(prefix)]
    if not rows:
        raise LookupError(f"no API key starts with {prefix!r} (see `slmtune keys list`)")
    if len(rows) > 1:
        raise LookupError(f"{len(rows)} keys start with {prefix!r}; give the whole prefix from `slmtune keys list`")
    session.delete(rows[0])
    return rows[0]
