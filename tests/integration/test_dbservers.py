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
    for name in ("conftest.py", "dbservers.py"):
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
