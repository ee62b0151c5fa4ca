"""`slmtune keys`: create, list and revoke the service's API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from slmtune.cli.common import err, fail
from slmtune.cli.service import DbOpt, open_db, settings_for

app = typer.Typer(help="API keys of the service (stored hashed; each belongs to a project).", no_args_is_help=True)


def keys_db(db: str | None):
    return open_db(settings_for(db).db_url)


@app.command("create")
def keys_create(project: Annotated[str, typer.Option(help="Project the key belongs to (created if new).")],
                expires_in: Annotated[str | None, typer.Option(help="Lifetime, e.g. 90m, 12h or 30d (default: "
                                                               "until revoked).")] = None,
                db: DbOpt = None) -> None:
    """Create an API key for a project and print it (it is shown only once)."""
    import time

    from slmtune.service.auth import create_key, parse_duration

    try:
        expires_at = int(time.time()) + parse_duration(expires_in) if expires_in else None
    except ValueError as e:
        fail(f"--expires-in {e}", 2)
    database = keys_db(db)
    try:
        with database.session() as s:
            key = create_key(s, project, expires_at)
    except ValueError as e:
        fail(str(e), 2)
    print(key)


@app.command("list")
def keys_list(project: Annotated[str | None, typer.Option(help="Only this project's keys.")] = None,
              db: DbOpt = None) -> None:
    """List API keys: prefix, project, creation time and expiry (the keys themselves are never stored)."""
    import time

    from slmtune.service.auth import list_keys, utc_time

    with keys_db(db).session() as s:
        rows = [(k.prefix, k.project_id, k.created_at, k.expires_at) for k in list_keys(s, project)]
    for prefix, proj, created, expires in rows:
        ends = "never expires" if expires is None else (
            f"{'expired' if expires <= time.time() else 'expires'} {utc_time(expires)}")
        print(f"{prefix}…\t{proj}\t{utc_time(created)}\t{ends}")
    if not rows:
        err.print("no API keys" + (f" for project {project}" if project else ""))


@app.command("revoke")
def keys_revoke(prefix: Annotated[str, typer.Argument(help="The key's prefix as `slmtune keys list` shows it (or "
                                                         "the whole key).")],
                db: DbOpt = None) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    from slmtune.service.auth import revoke_key

    try:
        with keys_db(db).session() as s:
            row = revoke_key(s, prefix.rstrip("…"))
            label = f"{row.prefix}… ({row.project_id})"
    except LookupError as e:
        fail(str(e.args[0]), 2)
    err.print(f"revoked {label}")
