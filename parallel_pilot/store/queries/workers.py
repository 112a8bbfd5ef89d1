"""Registered workers: tokens, liveness, revocation, per-job failure counts (per worker
and per join token), and what an admin decides about a worker (approval, trust)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.states import TaskState
from parallel_pilot.store.queries._common import Row, _new_id
from parallel_pilot.store.tables import (
    tasks,
    token_job_failures,
    worker_job_failures,
    workers,
)


def insert_worker(conn: sa.Connection, name: str, token_hash: str,
                  capabilities: dict[str, Any], now: float, *,
                  join_token_id: int | None = None, slots: int | None = None,
                  gpu_slots: int | None = None, pending: bool = False) -> int:
    result = conn.execute(workers.insert().values(
        name=name, token_hash=token_hash, capabilities=capabilities, created_at=now,
        last_seen=now, tasks_done=0, join_token_id=join_token_id, slots=slots,
        gpu_slots=gpu_slots, pending=pending,
    ))
    return _new_id(result)


def set_worker_slots(conn: sa.Connection, worker_id: int, slots: int,
                     gpu_slots: int | None = None) -> None:
    conn.execute(workers.update().where(workers.c.id == worker_id)
                 .values(slots=slots, gpu_slots=gpu_slots))


_LOCK_COLUMNS = (workers.c.id, workers.c.slots, workers.c.gpu_slots, workers.c.trusted,
                 workers.c.pending, workers.c.paused_until, workers.c.join_token_id)
_LOCK: sa.Select[Any] = (sa.select(*_LOCK_COLUMNS).where(workers.c.id == sa.bindparam("w"))
                         .with_for_update())


def lock_worker(conn: sa.Connection, worker_id: int) -> Row | None:
    """The worker's row as it is now (slots allowed, trust, approval, pause), locked to
    this transaction on server databases: every claim for one worker takes this lock
    first, so two requests of one worker cannot both fill the same room."""
    return conn.execute(_LOCK, {"w": worker_id}).first()


def pause_worker(conn: sa.Connection, worker_id: int, until: float) -> None:
    conn.execute(workers.update().where(workers.c.id == worker_id)
                 .values(paused_until=until))


def set_worker_trusted(conn: sa.Connection, worker_id: int, trusted: bool) -> bool:
    return bool(conn.execute(workers.update().where(workers.c.id == worker_id)
                             .values(trusted=trusted)).rowcount)


def approve_worker(conn: sa.Connection, worker_id: int) -> bool:
    """A pending worker may get tasks from now on; False when it was not pending."""
    return bool(conn.execute(workers.update().where(workers.c.id == worker_id,
                                                    workers.c.pending.is_(True))
                             .values(pending=False)).rowcount)


def take_back_worker(conn: sa.Connection, worker_id: int, name: str, token_hash: str,
                     new_token_hash: str, capabilities: dict[str, Any], now: float) -> bool:
    """Give a restarted worker its row again: only the row of that id and name that still
    holds ``token_hash`` and is not revoked; it gets the new token and capabilities and
    is online again, keeping ``tasks_done``. False when no row matches."""
    return bool(conn.execute(
        workers.update().where(workers.c.id == worker_id, workers.c.name == name,
                               workers.c.token_hash == token_hash,
                               workers.c.revoked_at.is_(None))
        .values(token_hash=new_token_hash, capabilities=capabilities, last_seen=now,
                left_at=None)
    ).rowcount)


def worker_by_token_hash(conn: sa.Connection, token_hash: str) -> Row | None:
    return conn.execute(
        sa.select(workers).where(workers.c.token_hash == token_hash,
                                 workers.c.revoked_at.is_(None))
    ).first()


def touch_worker(conn: sa.Connection, worker_id: int, now: float) -> bool:
    """Note that the worker was heard from; False when it has left (only registering
    again brings a worker back: a long poll still open after ``leave`` must not)."""
    result = conn.execute(workers.update().where(workers.c.id == worker_id,
                                                 workers.c.left_at.is_(None))
                          .values(last_seen=now))
    return result.rowcount > 0


def mark_worker_left(conn: sa.Connection, worker_id: int, now: float) -> None:
    conn.execute(workers.update().where(workers.c.id == worker_id)
                 .values(last_seen=now, left_at=now))


def add_worker_done(conn: sa.Connection, worker_id: int) -> None:
    conn.execute(workers.update().where(workers.c.id == worker_id)
                 .values(tasks_done=workers.c.tasks_done + 1))


def list_workers(conn: sa.Connection) -> list[Row]:
    return list(conn.execute(sa.select(workers).order_by(workers.c.id)))


def leased_task_ids_by_worker(conn: sa.Connection) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for task_id, worker_id in conn.execute(
        sa.select(tasks.c.id, tasks.c.worker_id).where(tasks.c.state == TaskState.LEASED)
    ):
        out.setdefault(worker_id, []).append(task_id)
    return out


def record_worker_failure(conn: sa.Connection, worker_id: int, job_id: int,
                          join_token_id: int | None = None) -> None:
    """One failed attempt of the job by the worker, and by its join token when given (the
    count a new registration with the same token cannot shed)."""
    _count_failure(conn, worker_job_failures, worker_job_failures.c.worker_id, worker_id,
                   job_id)
    if join_token_id is not None:
        _count_failure(conn, token_job_failures, token_job_failures.c.join_token_id,
                       join_token_id, job_id)


def _count_failure(conn: sa.Connection, table: sa.Table, who: sa.Column[Any], who_id: int,
                   job_id: int) -> None:
    where = (who == who_id) & (table.c.job_id == job_id)
    if conn.execute(table.update().where(where)
                    .values(failures=table.c.failures + 1)).rowcount:
        return
    try:
        with conn.begin_nested():  # another transaction may insert the same row meanwhile
            conn.execute(table.insert().values({who.name: who_id, "job_id": job_id,
                                                "failures": 1}))
    except sa.exc.IntegrityError:
        conn.execute(table.update().where(where).values(failures=table.c.failures + 1))


def jobs_blocking_worker(conn: sa.Connection, worker_id: int, threshold: int) -> list[int]:
    return list(conn.execute(
        sa.select(worker_job_failures.c.job_id).where(
            worker_job_failures.c.worker_id == worker_id,
            worker_job_failures.c.failures >= threshold)
    ).scalars())


def get_worker(conn: sa.Connection, worker_id: int) -> Row | None:
    return conn.execute(sa.select(workers).where(workers.c.id == worker_id)).first()


def revoke_worker(conn: sa.Connection, worker_id: int, now: float) -> bool:
    return bool(conn.execute(
        workers.update().where(workers.c.id == worker_id, workers.c.revoked_at.is_(None))
        .values(revoked_at=now)).rowcount)


def leased_tasks_of_worker(conn: sa.Connection, worker_id: int) -> list[Row]:
    return list(conn.execute(
        sa.select(tasks.c.id, tasks.c.job_id, tasks.c.attempt)
        .where(tasks.c.worker_id == worker_id, tasks.c.state == TaskState.LEASED)
        .order_by(tasks.c.id)))


_ONLINE = (sa.select(workers.c.id, workers.c.capabilities, workers.c.trusted, workers.c.pending)
           .where(workers.c.left_at.is_(None), workers.c.revoked_at.is_(None),
                  workers.c.last_seen >= sa.bindparam("since"))
           .order_by(workers.c.id))


def online_workers(conn: sa.Connection, since: float) -> list[Row]:
    """Workers heard from at or after ``since`` that have not left nor been revoked."""
    return list(conn.execute(_ONLINE, {"since": since}))
