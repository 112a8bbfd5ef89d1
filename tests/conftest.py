"""Shared fixtures: the skip-or-fail policy for missing pieces, and database URLs.

Database fixtures (servers start once per session, on 127.0.0.1, from their binaries):
- `postgres_url`, `mariadb_url`: the `pilot` database of the session's server.
- `database_url`: parametrised over sqlite, postgres and mariadb; a fresh, empty database
  per test (a file for SQLite, `CREATE DATABASE t_<random>` on the servers, dropped after).
- `fresh_database(kind)`: the same for one kind, for tests that choose their own kinds;
  `fresh_database(kind, migrated=True)` has the newest schema already.
- `migrated_database_url`: like `database_url`, with the newest schema, for tests of what a
  coordinator does rather than of how it migrates. Each is a copy of a template database
  that this test process migrated once with the real migrations (a file copy on SQLite,
  `CREATE DATABASE ... TEMPLATE` on PostgreSQL, the template's `SHOW CREATE` statements on
  MariaDB): migrating afresh cost 0.13 s, 0.38 s and 0.7 s a test; a copy 0.01 s, 0.16 s
  and 0.28 s.

A missing server or tool skips the test with its reason on a developer's machine; under CI
(`CI=true`) it fails instead, so nothing is skipped silently there. Fixtures for other tools
(ffmpeg, chromium, bwrap, ...) should call `require(reason)` for the same policy.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# argon2id at its cheapest for every coordinator the tests start, in this process and in the
# `pilot` processes it starts (they inherit the environment): see coordinator/passwords.py.
# tests/unit/test_passwords.py checks that a coordinator without it uses the library's
# recommended parameters.
os.environ.setdefault("PILOT_INSECURE_FAST_PASSWORD_HASH", "1")

if __package__:  # tests/ is a package: this module is tests.conftest
    from . import dbservers, warm_processes
else:  # rootdir-relative import: tests/ itself is on sys.path
    import dbservers
    import warm_processes

# Under CI a missing server or tool fails the test instead of skipping it.
IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}

DATABASE_KINDS = ("sqlite", "postgres", "mariadb")


def require(reason: str | None) -> None:
    """Skip (on a developer's machine) or fail (under CI) when `reason` says what is missing.

    `reason` is None when everything is available, e.g.
    `require(None if shutil.which("ffmpeg") else "ffmpeg is not installed")`.
    """
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing piece fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def requirement() -> Callable[[str | None], None]:
    """`require` for test modules: `def test_x(requirement): requirement(reason_or_none)`."""
    return require


# `PILOT_TESTS_COLD_PROCESSES=1`: the clusters' `pilot` processes start as fresh interpreters
COLD_PROCESSES = os.environ.get("PILOT_TESTS_COLD_PROCESSES", "") == "1"


@pytest.fixture(scope="session", autouse=True)
def warm_pilot_processes() -> Iterator[None]:
    """Every ``LocalCluster`` a test makes in this process forks its `pilot server` and
    `pilot worker` processes from one warm interpreter (``warm_processes``), which saves
    1.7 s (a server) and 0.6 s (a worker) of CPU each; `pilot up` and the CLI, run as
    commands, start as usual."""
    from parallel_pilot.client.local_cluster import LocalCluster

    if COLD_PROCESSES:
        yield
        return
    forker = warm_processes.WarmForker()
    LocalCluster.spawner = forker.spawn
    try:
        yield
    finally:
        LocalCluster.spawner = None
        forker.close()


def _server(kind: str) -> Iterator[dbservers.DatabaseServer]:
    require(dbservers.unavailable_reason(kind))
    server = dbservers.start_server(kind)
    _started_servers.append(server)
    try:
        yield server
    finally:
        server.stop()


_started_servers: list[dbservers.DatabaseServer] = []


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[dbservers.DatabaseServer]:
    yield from _server("postgres")


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[dbservers.DatabaseServer]:
    yield from _server("mariadb")


@pytest.fixture(scope="session")
def postgres_url(postgres_server: dbservers.DatabaseServer) -> str:
    """SQLAlchemy URL of the session's PostgreSQL `pilot` database (shared by all tests)."""
    return postgres_server.url


@pytest.fixture(scope="session")
def mariadb_url(mariadb_server: dbservers.DatabaseServer) -> str:
    """SQLAlchemy URL of the session's MariaDB `pilot` database (shared by all tests)."""
    return mariadb_server.url


# kind -> the template this process migrated (a file path for SQLite, a database name)
_templates: dict[str, str] = {}


def _template(kind: str, server: dbservers.DatabaseServer | None, folder: Path) -> str:
    """The migrated template of ``kind`` for this test process, made on first use."""
    from parallel_pilot.store.database import open_database

    if kind not in _templates:
        if server is None:
            path = folder / "template.db"
            engine = open_database(f"sqlite:///{folder / 'migrating.db'}")
            engine.dispose()
            with sqlite3.connect(folder / "migrating.db") as source, \
                    sqlite3.connect(path) as target:
                source.backup(target)  # one file, whatever the WAL held
            _templates[kind] = str(path)
        else:
            name = f"template_{secrets.token_hex(6)}"
            open_database(server.create_database(name)).dispose()
            _templates[kind] = name
    return _templates[kind]


@pytest.fixture
def fresh_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., str]]:
    """A factory: `fresh_database("postgres")` returns the URL of a new, empty database;
    `fresh_database("postgres", migrated=True)` one with the newest schema."""
    created: list[tuple[dbservers.DatabaseServer, str]] = []

    def make(kind: str, *, migrated: bool = False) -> str:
        if kind == "sqlite":
            path = tmp_path / f"pilot-{secrets.token_hex(4)}.db"
            if migrated:
                folder = request.getfixturevalue("tmp_path_factory").getbasetemp()
                shutil.copyfile(_template(kind, None, folder), path)
            return f"sqlite:///{path}"
        if kind not in dbservers.KINDS:
            raise ValueError(f"unknown database kind {kind!r}; known: {DATABASE_KINDS}")
        server: dbservers.DatabaseServer = request.getfixturevalue(f"{kind}_server")
        name = f"t_{secrets.token_hex(6)}"
        url = server.copy_database(_template(kind, server, tmp_path), name) if migrated \
            else server.create_database(name)
        created.append((server, name))
        return url

    yield make
    for server, name in created:
        server.drop_database(name)


_KIND_PARAMS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(params=_KIND_PARAMS)
def database_url(request: pytest.FixtureRequest, fresh_database: Callable[..., str]) -> str:
    """A fresh, empty database on each of SQLite, PostgreSQL and MariaDB (one test each)."""
    return fresh_database(request.param)


@pytest.fixture(params=_KIND_PARAMS)
def migrated_database_url(request: pytest.FixtureRequest,
                          fresh_database: Callable[..., str]) -> str:
    """A fresh database with the newest schema on each of SQLite, PostgreSQL and MariaDB."""
    return fresh_database(request.param, migrated=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for server in _started_servers:
        terminalreporter.write_line(
            f"{server.kind} test server: started in {server.start_seconds:.2f} s"
            f" on 127.0.0.1:{server.port}"
        )
