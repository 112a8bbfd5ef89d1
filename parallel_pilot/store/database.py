"""Database engines for SQLite (default, WAL), PostgreSQL and MariaDB/MySQL, and the
alembic upgrade that every coordinator runs at start.

Several coordinators may start at once on one database, so the upgrade runs under a lock
held by its connection: a transaction-scoped advisory lock on PostgreSQL (DDL is
transactional there, so the lock and the migration end together), ``GET_LOCK`` on
MariaDB/MySQL (whose DDL commits by itself), and on SQLite the write lock that every
transaction takes up front (``BEGIN IMMEDIATE``). The one that waited finds the schema
at head and does nothing."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

SQLITE_BUSY_MS = 30_000  # milliseconds a SQLite writer waits for the lock before failing
POOL_SIZE = 10  # connections kept open per coordinator process (server databases)
POOL_OVERFLOW = 20  # extra connections allowed under load

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_LOCK_KEY = 0x70696C6F74  # PostgreSQL advisory lock key of the upgrade ("pilot")
MIGRATION_LOCK_NAME = "parallel_pilot.migrations"  # MariaDB/MySQL named lock of the upgrade
MIGRATION_LOCK_SECONDS = 600  # how long a coordinator waits for another's upgrade (MariaDB)


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


_DEADLOCK_STATES = ("40P01", "40001")  # PostgreSQL: deadlock detected, serialization failure
_DEADLOCK_ERRNOS = (1213,)  # MariaDB/MySQL: deadlock found when trying to get lock


def is_deadlock(error: BaseException) -> bool:
    """The database aborted the transaction to break a lock cycle: running it again from
    the start is safe and will most likely pass."""
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    orig = error.orig
    if getattr(orig, "sqlstate", None) in _DEADLOCK_STATES:
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _DEADLOCK_ERRNOS


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest alembic revision, one coordinator at a time."""
    config = _config()
    dialect = engine.dialect.name
    with engine.begin() as connection:
        if dialect == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK_KEY})
        elif dialect in ("mysql", "mariadb"):
            got = connection.execute(sa.text("SELECT GET_LOCK(:name, :seconds)"),
                                     {"name": MIGRATION_LOCK_NAME,
                                      "seconds": MIGRATION_LOCK_SECONDS}).scalar()
            if got != 1:
                raise RuntimeError(f"another coordinator's schema upgrade held the lock "
                                   f"{MIGRATION_LOCK_NAME!r} for {MIGRATION_LOCK_SECONDS} s")
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        finally:
            if dialect in ("mysql", "mariadb"):
                connection.execute(sa.text("SELECT RELEASE_LOCK(:name)"),
                                   {"name": MIGRATION_LOCK_NAME})


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest schema revision this installation knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The database's schema revision (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def open_database(url: str) -> sa.Engine:
    engine = make_engine(url)
    migrate(engine)
    return engine
