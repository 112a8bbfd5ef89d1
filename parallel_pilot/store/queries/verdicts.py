"""What workers said of a task's failed attempts: those whose worker said a retry cannot
help (``retryable=false``), each with the identity it spoke for, and every failed
attempt's normalised reason with the voice that reported it (``core.reasons``);
``coordinator.services.trust`` decides from them whether a task fails now."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from parallel_pilot.store.queries._common import _chunks
from parallel_pilot.store.tables import failure_reasons, nonretryable_reports, tasks


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


def record_failure_reason(conn: sa.Connection, *, task_id: int, attempt: int, job_id: int,
                          worker_id: int, voice: str, reason_key: str, now: float) -> None:
    """Once per failed attempt (its report is fenced by the attempt)."""
    conn.execute(failure_reasons.insert().values(
        task_id=task_id, attempt=attempt, job_id=job_id, worker_id=worker_id, voice=voice,
        reason_key=reason_key, at=now))


def voices_with_reason(conn: sa.Connection, task_id: int, reason_key: str) -> set[str]:
    """The distinct voices that reported this task failing with this reason."""
    return set(conn.execute(
        sa.select(failure_reasons.c.voice).distinct()
        .where(failure_reasons.c.task_id == task_id,
               failure_reasons.c.reason_key == reason_key)).scalars())


def forget_failure_reasons(conn: sa.Connection, task_ids: Sequence[int]) -> None:
    """A retried task starts afresh: its earlier failures' reasons are dropped."""
    for part in _chunks(sorted(set(task_ids))):
        conn.execute(failure_reasons.delete().where(failure_reasons.c.task_id.in_(part)))
