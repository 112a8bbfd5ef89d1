"""First start: with no user in the database, create the admin account with a random
password and an API token, and a worker join token; write the password and both tokens
into the data directory (mode 0600)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from parallel_pilot.coordinator.passwords import hash_password, new_password
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.tokens import (
    JOIN_TOKEN_PREFIX,
    USER_TOKEN_PREFIX,
    hash_token,
    new_token,
)
from parallel_pilot.store import queries as q

ADMIN_NAME = "admin"
ADMIN_TOKEN_FILE = "admin-token"
ADMIN_PASSWORD_FILE = "admin-password"  # for the dashboard login
JOIN_TOKEN_FILE = "join-token"


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


def ensure_admin(svc: Services) -> FirstStart | None:
    """Create the admin and a join token if the database has no user; else return None."""
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
