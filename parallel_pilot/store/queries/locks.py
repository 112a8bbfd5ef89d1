"""Locks that one coordinator of a farm holds at a time, for periodic work that several
coordinators on one database would otherwise do at once (the reaper): PostgreSQL's
transaction advisory locks, MariaDB/MySQL's ``GET_LOCK``; on SQLite, whose writer lock
already lets one transaction write at a time, always granted."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

_PREFIX = "pilot:"


@contextmanager
def farm_lock(conn: sa.Connection, name: str) -> Iterator[bool]:
    """Whether this transaction got the lock ``name`` (never waits: False when another
    coordinator holds it); held until the block ends (PostgreSQL: the transaction)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        key = zlib.crc32((_PREFIX + name).encode())  # a stable 32-bit key per name
        yield bool(conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:key)"),
                                {"key": key}).scalar())
    elif dialect in ("mysql", "mariadb"):
        got = conn.execute(sa.text("SELECT GET_LOCK(:name, 0)"),
                           {"name": _PREFIX + name}).scalar() == 1
        try:
            yield got
        finally:
            if got:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": _PREFIX + name})
    else:
        yield True
