"""Blob records are upserts (issue 14): uploads of the same bytes at the same moment never
collide on a key, on SQLite, PostgreSQL and MariaDB. The blob, its reader and an attempt's
upload grant are each inserted by one statement that does nothing where the key exists;
the former select-then-insert let a second transaction, not seeing the first's uncommitted
row, insert and fail on the key once the first committed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from parallel_pilot.store import queries as q
from parallel_pilot.store.database import open_database
from parallel_pilot.store.tables import attempt_uploads, blob_readers, blobs

SHA = "ab" * 32
WAIT_SECONDS = 30.0  # how long a test waits for a condition at most


def record(conn: sa.Connection, worker_id: int = 1) -> None:
    """What one upload writes: the blob, its reader (a user's), a grant (a worker's)."""
    q.insert_blob(conn, SHA, 5, 1.0, user_id=1, worker_id=None)
    q.add_blob_reader(conn, SHA, 1)
    q.add_attempt_upload(conn, task_id=7, attempt=1, sha256=SHA, worker_id=worker_id,
                         size=5, now=1.0)


def counts(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (blobs, blob_readers, attempt_uploads)]


def waiting_on_a_lock(engine: sa.Engine) -> Callable[[], bool]:
    """Whether another transaction waits for a row lock (PostgreSQL, MariaDB: while the
    first upload's row is uncommitted, its INSERT can only be waiting); SQLite
    transactions start with the write lock, so there the second one waits at BEGIN."""
    name = engine.dialect.name
    if name == "postgresql":
        sql = "SELECT count(*) FROM pg_locks WHERE NOT granted"
    elif name in ("mysql", "mariadb"):  # its INSERT runs (innodb_trx does not always list it)
        sql = ("SELECT count(*) FROM information_schema.processlist "
               "WHERE command = 'Query' AND info LIKE 'INSERT INTO blobs%'")
    else:
        return lambda: True

    def check() -> bool:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar_one()) > 0
    return check


def test_an_insert_waiting_on_an_uncommitted_one_does_not_collide(database_url: str) -> None:
    engine = open_database(database_url)
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with engine.begin() as conn:
                record(conn)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    try:
        with engine.connect() as first:
            transaction = first.begin()
            record(first)  # not committed yet
            thread = threading.Thread(target=second)
            thread.start()
            waiting = waiting_on_a_lock(engine)
            deadline = time.monotonic() + WAIT_SECONDS
            while not waiting():
                assert time.monotonic() < deadline, "the second upload never waited"
                time.sleep(0.02)
            transaction.commit()
        thread.join(WAIT_SECONDS)
        assert not thread.is_alive()
        assert errors == []
        assert counts(engine) == [1, 1, 1]
    finally:
        engine.dispose()


def test_many_uploads_of_the_same_bytes_at_once(database_url: str) -> None:
    engine = open_database(database_url)
    threads, rounds = 8, 5
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads, timeout=WAIT_SECONDS)

    def upload(i: int) -> None:
        for r in range(rounds):
            barrier.wait()
            try:
                with engine.begin() as conn:
                    q.insert_blob(conn, f"{r:02x}" * 32, 5, 1.0, user_id=None, worker_id=i)
                    q.add_blob_reader(conn, f"{r:02x}" * 32, i % 2)
                    q.add_attempt_upload(conn, task_id=1, attempt=1, sha256=f"{r:02x}" * 32,
                                         worker_id=i, size=5, now=1.0)
            except BaseException as exc:
                errors.append(exc)

    try:
        pool = [threading.Thread(target=upload, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(WAIT_SECONDS * rounds)
        assert errors == []
        # one blob per round (its first uploader kept), two readers, one grant
        assert counts(engine) == [rounds, 2 * rounds, rounds]
        with engine.connect() as conn:
            assert all(row.size == 5 for row in conn.execute(sa.select(blobs)))
    finally:
        engine.dispose()


def test_a_second_upload_keeps_the_first_uploader(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'pilot.db'}")
    try:
        with engine.begin() as conn:
            q.insert_blob(conn, SHA, 5, 1.0, user_id=1, worker_id=None)
            q.insert_blob(conn, SHA, 5, 2.0, user_id=2, worker_id=None)
            row = conn.execute(sa.select(blobs)).one()
        assert (row.user_id, row.created_at) == (1, 1.0)
    finally:
        engine.dispose()
