"""`slmtune db`: the service database's schema revisions (Alembic migrations shipped with slmtune)."""

from __future__ import annotations

from typing import Annotated

import typer

from slmtune.cli.common import err, fail
from slmtune.cli.service import DbOpt, settings_for, shown

app = typer.Typer(help="The service database's schema (Alembic migrations shipped with slmtune).", no_args_is_help=True)


def schema_call(fn, *args):
    from slmtune.service.migrations import SchemaError

    try:
        return fn(*args)
    except SchemaError as e:
        fail(str(e), 2)


@app.command("upgrade")
def db_upgrade(db: DbOpt = None, revision: Annotated[str, typer.Option(help="Target revision.")] = "head") -> None:
    """Upgrade the database schema to this release's newest revision (back the database up first)."""
    from slmtune.service import migrations

    url = settings_for(db).db_url
    before, after = schema_call(migrations.upgrade, url, revision)
    change = f"already at {after}" if before == after else f"{before or 'empty'} → {after}"
    err.print(f"database {shown(url)}: {change}")


@app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Revision to go back to (see `slmtune db history`).")],
                 db: DbOpt = None) -> None:
    """Downgrade the schema before installing an older slmtune (columns added since are dropped with their data)."""
    from slmtune.service import migrations

    url = settings_for(db).db_url
    before, after = schema_call(migrations.downgrade, url, revision)
    err.print(f"database {shown(url)}: {before} → {after or 'empty'}")


@app.command("current")
def db_current(db: DbOpt = None) -> None:
    """Print the database's schema revision and whether this release can use it."""
    from slmtune.service import migrations

    url = settings_for(db).db_url
    rev, st = schema_call(migrations.revision_of, url)
    say = {"head": "up to date",
           "behind": f"older than this release's {migrations.heads()[0]}: run `slmtune db upgrade`",
           "ahead": "newer than this release knows (a newer slmtune upgraded it)", "empty": "no slmtune tables yet",
           "legacy": f"made by slmtune 0.1 (no revision yet; `slmtune db upgrade` stamps it {migrations.BASELINE})"}[st]
    print(f"{rev or '-'}\t{say}")


@app.command("history")
def db_history() -> None:
    """List the schema revisions this release ships, oldest first."""
    from slmtune.service import migrations

    head = migrations.heads()[0]
    for rev, down, msg in migrations.history():
        print(f"{down or '-'} → {rev}{' (head)' if rev == head else ''}\t{msg}")
