"""Database engines for SQLite (default, WAL), PostgreSQL and MariaDB/MySQL, and the
alembic upgrade that every coordinator runs at start."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

SQLITE_BUSY_MS = 30_000  # milliseconds a SQLite writer waits for the lock before failing
POOL_SIZE = 10  # connections kept open per coordinator process (server databases)
POOL_OVERFLOW = 20  # extra connections allowed under load

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def make_engine(url: str) -> sa.Engine:
    """An engine configured for the coordinator's use of ``url``'s dialect."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    kwargs: dict = {"pool_pre_ping": True, "pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    if url.startswith("mysql") or url.startswith("mariadb"):
        # READ COMMITTED keeps SKIP LOCKED claims from taking gap locks on each other
        kwargs.update(isolation_level="READ COMMITTED", pool_recycle=3600)
    return sa.create_engine(url, **kwargs)


def _sqlite_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(
        url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000},
        pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # take transaction control from pysqlite so that BEGIN IMMEDIATE below is used
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # every transaction takes the write lock up front: no deadlock on lock upgrade,
        # and a claim's SELECT + UPDATE is atomic (SQLite has no FOR UPDATE)
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str) -> sa.Engine:
    engine = make_engine(url)
    migrate(engine)
    return engine
