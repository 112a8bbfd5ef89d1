"""First start: with no user in the database, create the admin account with a random
password and an API token, and a worker join token; write the password and both tokens
into the data directory (mode 0600). Every start: ``tighten_data_dir`` gives the data
directory 0700 and its data files 0600, also where an older version left them open."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from parallel_pilot.coordinator.passwords import hash_password, new_password
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.tokens import (
    JOIN_TOKEN_PREFIX,
    USER_TOKEN_PREFIX,
    hash_token,
    new_token,
)
from parallel_pilot.core.folders import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, tighten
from parallel_pilot.core.settings import CoordinatorSettings
from parallel_pilot.store import queries as q

ADMIN_NAME = "admin"
ADMIN_TOKEN_FILE = "admin-token"
ADMIN_PASSWORD_FILE = "admin-password"  # for the dashboard login
JOIN_TOKEN_FILE = "join-token"
SECRET_FILES = (ADMIN_TOKEN_FILE, ADMIN_PASSWORD_FILE, JOIN_TOKEN_FILE)
LOGS_DIR = "logs"  # where ``pilot up`` writes the coordinator's and workers' logs
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")  # a SQLite database's files


@dataclass
class FirstStart:
    admin_token_file: Path
    join_token_file: Path
    admin_password_file: Path


def write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)


def tighten_data_dir(settings: CoordinatorSettings) -> None:
    """Data directory, logs folder 0700; database, secrets and logs 0600 (blobs: their
    store does its own)."""
    data_dir = settings.data_dir
    tighten(data_dir, PRIVATE_DIR_MODE)
    for name in SECRET_FILES:
        tighten(data_dir / name, PRIVATE_FILE_MODE)
    logs = data_dir / LOGS_DIR
    tighten(logs, PRIVATE_DIR_MODE)
    if logs.is_dir():
        for path in logs.iterdir():
            tighten(path, PRIVATE_FILE_MODE)
    database = sqlite_file(settings.resolved_database_url())
    if database is not None:
        for suffix in SQLITE_COMPANIONS:
            tighten(database.with_name(database.name + suffix), PRIVATE_FILE_MODE)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for other databases and in-memory ones."""
    parsed = sa.engine.make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def ensure_admin(svc: Services) -> FirstStart | None:
    """Create the admin and a join token if the database has no user; else return None
    (also when another coordinator starting at the same moment created it first)."""
    try:
        return _create_admin(svc)
    except sa.exc.IntegrityError:
        return None  # the other one's admin row came first (its name is unique)


def _create_admin(svc: Services) -> FirstStart | None:
    now = svc.clock()
    password = new_password()
    password_hash = hash_password(password)  # slow on purpose; done before the transaction
    with svc.transaction() as conn:
        if q.count_users(conn):
            return None
        admin_token = new_token(USER_TOKEN_PREFIX)
        join_token = new_token(JOIN_TOKEN_PREFIX)
        admin_id = q.insert_user(conn, ADMIN_NAME, True, now)
        q.set_password_hash(conn, admin_id, password_hash)
        q.insert_api_token(conn, admin_id, hash_token(admin_token), "first start", now)
        q.insert_join_token(conn, hash_token(join_token), "first start", now)
        data_dir = svc.settings.data_dir
        first = FirstStart(data_dir / ADMIN_TOKEN_FILE, data_dir / JOIN_TOKEN_FILE,
                           data_dir / ADMIN_PASSWORD_FILE)
        # written inside the transaction: if writing fails, no account exists without them
        write_secret(first.admin_token_file, admin_token)
        write_secret(first.join_token_file, join_token)
        write_secret(first.admin_password_file, password)
    return first
