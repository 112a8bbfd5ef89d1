"""`pilot db status` and `pilot db upgrade` as an operator runs them, on SQLite and
PostgreSQL: an empty database is upgraded to the newest revision (the schema a
coordinator would make), a second upgrade changes nothing, a password in the URL is never
printed, and a database that cannot be reached is one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from parallel_pilot.store.database import head_revision

PILOT = [sys.executable, "-m", "parallel_pilot"]


def pilot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PILOT, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "PILOT_DATABASE_URL": ""},
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_upgrade_brings_an_empty_database_to_the_newest_revision(
        kind: str, tmp_path: Path, fresh_database: Callable[..., str]) -> None:
    where = ["--data-dir", str(tmp_path)] if kind == "sqlite" \
        else ["--database-url", fresh_database(kind)]
    status = pilot("db", "status", *where, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["revision"] is None
    first = pilot("db", "upgrade", *where, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) | {"database": ""} == {
        "database": "", "before": None, "revision": head_revision(), "head": head_revision(),
        "upgraded": True}
    again = pilot("db", "upgrade", *where, cwd=tmp_path)
    assert again.returncode == 0
    assert f"at revision {head_revision()}, the newest" in again.stdout


def test_a_database_that_cannot_be_reached_is_one_line_without_its_password(
        tmp_path: Path) -> None:
    url = "postgresql+psycopg://pilot:s3cret@127.0.0.1:9/pilot"  # nothing listens there
    out = pilot("db", "status", "--database-url", url, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.startswith("error: database postgresql+psycopg://pilot:***@127.0.0.1:9")
    assert "s3cret" not in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_a_missing_data_dir_is_a_usage_error(tmp_path: Path) -> None:
    out = pilot("db", "upgrade", "--data-dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert out.returncode == 2 and "no data dir" in out.stderr
    assert not (tmp_path / "nope").exists()
