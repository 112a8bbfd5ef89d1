"""Blob records and who may read them (uploaders, job owners, workers holding a task),
and what a worker uploaded for each attempt it held (the outputs it may report).

Records are inserted with ``_insert_new``: one statement that does nothing where the key
exists, so concurrent uploads of the same bytes never collide on a unique key (a select
first, then an insert, let two transactions both insert on PostgreSQL and MariaDB)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from parallel_pilot.core.states import TaskState
from parallel_pilot.store.queries._common import _chunks
from parallel_pilot.store.tables import (
    attempt_uploads,
    blob_readers,
    blobs,
    jobs,
    task_outputs,
    tasks,
)


def _insert_new(conn: sa.Connection, table: sa.Table, row: Mapping[str, Any]) -> None:
    """Insert ``row`` unless a row with its primary key exists (then change nothing):
    ``ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite, on MariaDB ``ON DUPLICATE KEY
    UPDATE`` of a key column to itself (``INSERT IGNORE`` would also hide other errors)."""
    name = conn.dialect.name
    if name == "postgresql":
        conn.execute(postgresql.insert(table).values(**row).on_conflict_do_nothing())
    elif name == "sqlite":
        conn.execute(sqlite.insert(table).values(**row).on_conflict_do_nothing())
    elif name in ("mysql", "mariadb"):
        key = table.primary_key.columns.values()[0].name
        statement = mysql.insert(table).values(**row)
        conn.execute(statement.on_duplicate_key_update({key: statement.inserted[key]}))
    else:  # pragma: no cover - the three databases above are the ones supported
        raise NotImplementedError(f"no insert-if-new for {name}")


def insert_blob(conn: sa.Connection, sha256: str, size: int, now: float,
                user_id: int | None, worker_id: int | None) -> None:
    """Record a stored blob; the first uploader's row stays (idempotent, race-free)."""
    _insert_new(conn, blobs, {"sha256": sha256, "size": size, "created_at": now,
                              "user_id": user_id, "worker_id": worker_id})


def blob_size(conn: sa.Connection, sha256: str) -> int | None:
    return conn.execute(sa.select(blobs.c.size).where(blobs.c.sha256 == sha256)).scalar()


def missing_blobs(conn: sa.Connection, shas: Iterable[str]) -> set[str]:
    wanted = sorted(set(shas))
    found: set[str] = set()
    for part in _chunks(wanted):
        found.update(conn.execute(
            sa.select(blobs.c.sha256).where(blobs.c.sha256.in_(part))).scalars())
    return set(wanted) - found


def _names_blob(column: sa.ColumnElement[Any], sha256: str) -> sa.ColumnElement[bool]:
    """Whether a JSON column's text mentions ``sha256`` (a validated 64-hex name, so it
    carries no LIKE wildcards); one portable test across SQLite, PostgreSQL and MariaDB."""
    return sa.cast(column, sa.Text).contains(sha256)


def blob_uploaded_by_user(conn: sa.Connection, user_id: int, sha256: str) -> bool:
    """Whether the user uploaded these bytes (any upload, not only the first)."""
    return conn.execute(
        sa.select(blob_readers.c.sha256).where(blob_readers.c.sha256 == sha256,
                                               blob_readers.c.user_id == user_id)
    ).first() is not None


def blob_is_output_of_users_job(conn: sa.Connection, user_id: int, sha256: str) -> bool:
    return conn.execute(
        sa.select(task_outputs.c.id).join(jobs, jobs.c.id == task_outputs.c.job_id)
        .where(task_outputs.c.sha256 == sha256, jobs.c.owner_id == user_id).limit(1)
    ).first() is not None


def blob_is_input_of_users_job(conn: sa.Connection, user_id: int, sha256: str) -> bool:
    return conn.execute(
        sa.select(tasks.c.id).join(jobs, jobs.c.id == tasks.c.job_id)
        .where(jobs.c.owner_id == user_id, _names_blob(tasks.c.inputs, sha256)).limit(1)
    ).first() is not None


def blob_uploaded_by_worker(conn: sa.Connection, worker_id: int, sha256: str) -> bool:
    """Whether the worker sent these bytes: for an attempt, or (before upload grants) as
    the blob's first uploader."""
    return conn.execute(
        sa.select(attempt_uploads.c.sha256).where(attempt_uploads.c.worker_id == worker_id,
                                                  attempt_uploads.c.sha256 == sha256).limit(1)
    ).first() is not None or conn.execute(
        sa.select(blobs.c.sha256).where(blobs.c.sha256 == sha256,
                                        blobs.c.worker_id == worker_id)
    ).first() is not None


def add_attempt_upload(conn: sa.Connection, *, task_id: int, attempt: int, sha256: str,
                       worker_id: int, size: int, now: float) -> None:
    """Record that the worker uploaded the blob for (task, attempt); idempotent."""
    _insert_new(conn, attempt_uploads, {"task_id": task_id, "attempt": attempt,
                                        "sha256": sha256, "worker_id": worker_id,
                                        "size": size, "created_at": now})


def attempt_upload_sizes(conn: sa.Connection, worker_id: int, task_id: int, attempt: int,
                         shas: Iterable[str]) -> dict[str, int]:
    """Of ``shas``, those the worker uploaded for (task, attempt), with their sizes."""
    wanted = sorted(set(shas))
    found: dict[str, int] = {}
    for part in _chunks(wanted):
        found.update((r.sha256, int(r.size)) for r in conn.execute(
            sa.select(attempt_uploads.c.sha256, attempt_uploads.c.size)
            .where(attempt_uploads.c.task_id == task_id,
                   attempt_uploads.c.attempt == attempt,
                   attempt_uploads.c.worker_id == worker_id,
                   attempt_uploads.c.sha256.in_(part))))
    return found


def blob_sizes(conn: sa.Connection, shas: Iterable[str]) -> dict[str, int]:
    """Sizes of the stored blobs among ``shas``."""
    wanted = sorted(set(shas))
    found: dict[str, int] = {}
    for part in _chunks(wanted):
        found.update((r.sha256, int(r.size)) for r in conn.execute(
            sa.select(blobs.c.sha256, blobs.c.size).where(blobs.c.sha256.in_(part))))
    return found


def blob_is_input_of_held_task(conn: sa.Connection, worker_id: int, sha256: str) -> bool:
    return conn.execute(
        sa.select(tasks.c.id).where(tasks.c.worker_id == worker_id,
                                    tasks.c.state == TaskState.LEASED,
                                    _names_blob(tasks.c.inputs, sha256)).limit(1)
    ).first() is not None


def blob_is_output_of_held_tasks_job(conn: sa.Connection, worker_id: int, sha256: str) -> bool:
    """An output of the job of a task the worker holds (an assembly step reads frames)."""
    held_jobs = sa.select(tasks.c.job_id).where(tasks.c.worker_id == worker_id,
                                                tasks.c.state == TaskState.LEASED)
    return conn.execute(
        sa.select(task_outputs.c.id).where(task_outputs.c.sha256 == sha256,
                                           task_outputs.c.job_id.in_(held_jobs)).limit(1)
    ).first() is not None


def add_blob_reader(conn: sa.Connection, sha256: str, user_id: int) -> None:
    """Record that ``user_id`` may read the blob (they uploaded its bytes); idempotent."""
    _insert_new(conn, blob_readers, {"sha256": sha256, "user_id": user_id})


def blobs_readable_by_user(conn: sa.Connection, user_id: int, shas: Iterable[str]) -> set[str]:
    """Of ``shas``, those the user may name as a job's input: blobs they uploaded and
    outputs of their own jobs."""
    wanted = sorted(set(shas))
    found: set[str] = set()
    for part in _chunks(wanted):
        found.update(conn.execute(
            sa.select(blob_readers.c.sha256).where(blob_readers.c.user_id == user_id,
                                                   blob_readers.c.sha256.in_(part))).scalars())
        found.update(conn.execute(
            sa.select(task_outputs.c.sha256).join(jobs, jobs.c.id == task_outputs.c.job_id)
            .where(jobs.c.owner_id == user_id, task_outputs.c.sha256.in_(part))).scalars())
    return found
