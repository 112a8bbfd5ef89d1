"""The suite's database fixtures: real servers on 127.0.0.1, fresh databases, CI policy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

TESTS_DIR = Path(__file__).resolve().parents[1]

metadata = sa.MetaData()
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("state", sa.String(20), nullable=False),
)


def test_database_url_round_trip(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(jobs.insert(), [{"id": 1, "state": "ready"}, {"id": 2, "state": "ready"}])
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 2
    finally:
        engine.dispose()


def test_server_urls_are_loopback(postgres_url: str, mariadb_url: str) -> None:
    for url, backend in ((postgres_url, "postgresql"), (mariadb_url, "mysql")):
        parsed = sa.make_url(url)
        assert parsed.host == "127.0.0.1"
        assert parsed.database == "pilot"
        assert parsed.get_backend_name() == backend


def test_fresh_databases_are_isolated(fresh_database: Callable[[str], str]) -> None:
    for kind in ("postgres", "mariadb"):
        first, second = (
            sa.create_engine(fresh_database(kind)),
            sa.create_engine(fresh_database(kind)),
        )
        try:
            metadata.create_all(first)
            assert sa.inspect(first).has_table("jobs")
            assert not sa.inspect(second).has_table("jobs")
        finally:
            first.dispose()
            second.dispose()


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_skip_locked_skips_a_row_locked_by_another_transaction(
    kind: str, fresh_database: Callable[[str], str]
) -> None:
    engine = sa.create_engine(fresh_database(kind))
    # A lock wait would mean SKIP LOCKED did not skip: fail in seconds, don't hang.
    if kind == "postgres":
        lock_timeout = "SET lock_timeout = '5s'"
    else:
        lock_timeout = "SET SESSION innodb_lock_wait_timeout = 5"
    claim = (
        sa.select(jobs.c.id)
        .where(jobs.c.state == "ready")
        .order_by(jobs.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(jobs.insert(), [{"id": i, "state": "ready"} for i in (1, 2, 3)])
        with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                conn.execute(sa.text(lock_timeout))
                conn.commit()
            with first.begin():
                assert first.execute(claim).scalar_one() == 1
                with second.begin():
                    # Row 1 is locked by `first`: skipped at once, not waited for.
                    assert second.execute(claim).scalar_one() == 2
                    second.execute(jobs.update().where(jobs.c.id == 2).values(state="running"))
                first.execute(jobs.update().where(jobs.c.id == 1).values(state="running"))
            with engine.connect() as conn:
                states = dict(conn.execute(sa.select(jobs.c.id, jobs.c.state)).all())
        assert states == {1: "running", 2: "running", 3: "ready"}
    finally:
        engine.dispose()


def test_sqlite_ignores_for_update(fresh_database: Callable[[str], str]) -> None:
    # Why the store needs its own claim path on SQLite: the lock clause is silently dropped.
    engine = sa.create_engine(fresh_database("sqlite"))
    statement = sa.select(jobs.c.id).with_for_update(skip_locked=True)
    try:
        compiled = str(statement.compile(dialect=engine.dialect))
        assert "FOR UPDATE" not in compiled
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(jobs.insert(), {"id": 1, "state": "ready"})
            assert conn.execute(statement).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize(("ci", "outcome"), [("true", "failed"), ("", "skipped")])
def test_missing_piece_skips_locally_and_fails_under_ci(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    for name in ("conftest.py", "dbservers.py", "warm_processes.py"):
        shutil.copy(TESTS_DIR / name, tmp_path / name)
    (tmp_path / "test_needs_tool.py").write_text(
        textwrap.dedent(
            """
            def test_needs_tool(requirement):
                requirement("frobnicator is not installed")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "CI": ci},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"1 {outcome}" in result.stdout, result.stdout + result.stderr
    assert "frobnicator is not installed" in result.stdout


def _schema(url: str) -> dict[str, object]:
    """Everything of a database's schema a coordinator relies on: per table its columns,
    primary key, indexes, unique constraints and foreign keys; the triggers (with their
    statements); the alembic revision."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        tables: dict[str, object] = {}
        for table in inspector.get_table_names():
            tables[table] = (
                [(c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                 for c in inspector.get_columns(table)],
                inspector.get_pk_constraint(table)["constrained_columns"],
                sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                       for i in inspector.get_indexes(table)),
                sorted((u["name"], tuple(u["column_names"]))
                       for u in inspector.get_unique_constraints(table)),
                sorted((f["referred_table"], tuple(f["constrained_columns"]),
                        tuple(f["referred_columns"]), str(f.get("options")))
                       for f in inspector.get_foreign_keys(table)))
        triggers = {
            "sqlite": "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'",
            "postgresql": "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
                          " WHERE NOT tgisinternal",
            "mysql": "SELECT trigger_name, action_statement FROM information_schema.triggers"
                     " WHERE trigger_schema = DATABASE()",
        }[engine.dialect.name]
        with engine.connect() as conn:
            found = sorted(tuple(row) for row in conn.exec_driver_sql(triggers))
            revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        return {"tables": tables, "triggers": found, "revision": [tuple(r) for r in revision]}
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                                  pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_a_migrated_copy_is_the_migrated_schema(
    kind: str, fresh_database: Callable[..., str]
) -> None:
    """`fresh_database(kind, migrated=True)` (a copy of this process's template) has the
    schema the real migrations make in an empty database, and no rows but the revision."""
    from parallel_pilot.store.database import open_database

    migrated = fresh_database(kind)
    open_database(migrated).dispose()
    copy = fresh_database(kind, migrated=True)
    expected, got = _schema(migrated), _schema(copy)
    assert got == expected
    assert len(expected["tables"]) > 10 and len(expected["triggers"]) >= 2  # type: ignore[arg-type]
    assert fresh_database(kind, migrated=True) != copy  # each call a database of its own
    engine = sa.create_engine(copy)
    try:
        with engine.connect() as conn:
            for table in sa.inspect(engine).get_table_names():
                if table != "alembic_version":
                    rows = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one()
                    assert rows == 0, table
    finally:
        engine.dispose()
