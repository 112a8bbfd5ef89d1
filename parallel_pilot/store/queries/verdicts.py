"""Attempts whose worker said a retry cannot help (``retryable=false``), each with the
identity it spoke for; ``coordinator.services.trust`` decides from them whether a task
fails on that word."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from parallel_pilot.store.queries._common import _chunks
from parallel_pilot.store.tables import nonretryable_reports, tasks


def record_nonretryable(conn: sa.Connection, *, task_id: int, attempt: int, job_id: int,
                        worker_id: int, identity: str, now: float) -> None:
    """Once per attempt (a report is applied once: it is fenced by the attempt)."""
    conn.execute(nonretryable_reports.insert().values(
        task_id=task_id, attempt=attempt, job_id=job_id, worker_id=worker_id,
        identity=identity, at=now))


def nonretryable_identities(conn: sa.Connection, task_id: int) -> set[str]:
    """The distinct identities that said a retry of this task cannot help."""
    return set(conn.execute(
        sa.select(nonretryable_reports.c.identity).distinct()
        .where(nonretryable_reports.c.task_id == task_id)).scalars())


def refused_by_worker(conn: sa.Connection, worker_id: int, task_ids: Sequence[int]) -> set[int]:
    """Those of ``task_ids`` this worker said it cannot do (a claim offers them to it last)."""
    out: set[int] = set()
    for part in _chunks(sorted(set(task_ids))):
        out.update(conn.execute(
            sa.select(nonretryable_reports.c.task_id).distinct()
            .where(nonretryable_reports.c.worker_id == worker_id,
                   nonretryable_reports.c.task_id.in_(part))).scalars())
    return out


def final_attempt_said_nonretryable() -> sa.ColumnElement[bool]:
    """For a query over ``tasks``: the task's current attempt said a retry cannot help."""
    return sa.exists().where(nonretryable_reports.c.task_id == tasks.c.id,
                             nonretryable_reports.c.attempt == tasks.c.attempt)


def forget_nonretryable(conn: sa.Connection, task_ids: Sequence[int]) -> None:
    """A retried task starts afresh: what workers said of its earlier attempts is dropped."""
    for part in _chunks(sorted(set(task_ids))):
        conn.execute(nonretryable_reports.delete()
                     .where(nonretryable_reports.c.task_id.in_(part)))
