"""``pilot db``: the coordinator's database. ``upgrade`` runs the migrations that a
coordinator runs at start, under the same lock (so it is safe while coordinators start),
for an operator who upgrades before restarting them; ``status`` says where it stands;
``backup`` copies a SQLite database consistently while the coordinator runs (SQLite's
online backup; PostgreSQL and MariaDB have their own tools, which it names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from parallel_pilot.client.cli.common import CommandFailure, UsageFailure, console, json_option
from parallel_pilot.core.settings import CoordinatorSettings
from parallel_pilot.kinds.base import describe_validation


def database_options(f: Any) -> Any:
    f = click.option("--database-url", metavar="URL",
                     help="SQLAlchemy URL of PostgreSQL or MariaDB (default: SQLite in the "
                          "data dir, or PILOT_DATABASE_URL).")(f)
    return click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                        help="The coordinator's data dir (default ./pilot-data).")(f)


@click.group("db")
def db_group() -> None:
    """The coordinator's database: `pilot db status`, `upgrade`, `backup`."""


@db_group.command("status")
@database_options
@json_option
def db_status(data_dir: Path | None, database_url: str | None, as_json: bool) -> None:
    """The database's schema revision and the newest this version knows."""
    _report(data_dir, database_url, as_json, upgrade=False)


@db_group.command("upgrade")
@database_options
@json_option
def db_upgrade(data_dir: Path | None, database_url: str | None, as_json: bool) -> None:
    """Bring the schema to the newest revision (what a coordinator does at start, under the
    same lock: one upgrade at a time, safe while coordinators start)."""
    _report(data_dir, database_url, as_json, upgrade=True)


@db_group.command("backup")
@database_options
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write (refused if it exists).")
def db_backup(data_dir: Path | None, database_url: str | None, out: Path) -> None:
    """A consistent copy of a SQLite database, safe while the coordinator runs (back up
    the data dir's blobs/ and token files alongside it; docs/operations.md)."""
    import sqlite3

    settings = _settings(data_dir, database_url)
    url = settings.resolved_database_url()
    if not url.startswith("sqlite:///"):
        raise UsageFailure("pilot db backup copies SQLite databases; back up PostgreSQL "
                           "with pg_dump and MariaDB with mariadb-dump (docs/operations.md)")
    source = Path(url.removeprefix("sqlite:///"))
    if not source.is_file():
        raise UsageFailure(f"no database at {source}: pass --data-dir (or --database-url)")
    if out.exists():
        raise UsageFailure(f"{out} exists: choose another file (a backup never overwrites)")
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as db, \
            sqlite3.connect(out) as copy:
        db.backup(copy)  # page by page, consistent even while the coordinator writes
    out.chmod(0o600)  # it holds token hashes and every job's parameters
    console.print(f"backed up {source} to {out} ({out.stat().st_size:,} bytes)")


def _settings(data_dir: Path | None, database_url: str | None) -> CoordinatorSettings:
    given: dict[str, Any] = {k: v for k, v in (("data_dir", data_dir),
                                                ("database_url", database_url)) if v}
    try:
        return CoordinatorSettings(**given)
    except ValidationError as exc:
        raise UsageFailure(describe_validation(exc)) from None


def _report(data_dir: Path | None, database_url: str | None, as_json: bool, *,
            upgrade: bool) -> None:
    import sqlalchemy as sa

    from parallel_pilot.store.database import (
        current_revision,
        head_revision,
        make_engine,
        migrate,
    )

    settings = _settings(data_dir, database_url)
    url = settings.resolved_database_url()
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    if url.startswith("sqlite") and not database_url and not settings.data_dir.is_dir():
        raise UsageFailure(f"no data dir {settings.data_dir}: pass --data-dir (or "
                           "--database-url)")
    try:
        engine = make_engine(url)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise UsageFailure(f"--database-url {shown}: {exc}") from None
    try:
        before, head = current_revision(engine), head_revision()
        if upgrade and before != head:
            migrate(engine)
        after = current_revision(engine)
    except sa.exc.SQLAlchemyError as exc:
        raise CommandFailure(f"database {shown}: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({"database": shown, "before": before, "revision": after,
                               "head": head, "upgraded": before != after}))
    elif before != after:
        console.print(f"database {shown}: upgraded from {before or 'empty'} to {after} "
                      "(the newest)")
    elif after == head:
        console.print(f"database {shown}: at revision {after}, the newest")
    else:
        console.print(f"database {shown}: at revision {after or 'empty'}; the newest is "
                      f"{head} (pilot db upgrade)")
