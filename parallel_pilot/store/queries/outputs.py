"""Task outputs and task log lines."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from parallel_pilot.store.queries._common import Row, _chunks
from parallel_pilot.store.tables import (
    task_logs,
    task_outputs,
    tasks,
)


def insert_output(conn: sa.Connection, *, job_id: int, task_id: int | None, attempt: int,
                  path: str, sha256: str, size: int, now: float) -> None:
    conn.execute(task_outputs.insert().values(
        job_id=job_id, task_id=task_id, attempt=attempt, path=path, sha256=sha256, size=size,
        created_at=now,
    ))


def delete_job_level_outputs(conn: sa.Connection, job_id: int) -> None:
    conn.execute(task_outputs.delete().where(task_outputs.c.job_id == job_id,
                                             task_outputs.c.task_id.is_(None)))


def job_outputs(conn: sa.Connection, job_id: int) -> list[Row]:
    """The job's outputs, each path once: job-level outputs and those of the attempt that
    finished each task (or, while a task runs, of its current attempt); where several of
    them wrote a path (a render's ``preview/latest.jpg``, once per frame), the latest wins."""
    latest = (
        sa.select(sa.func.max(task_outputs.c.id))
        .outerjoin(tasks, tasks.c.id == task_outputs.c.task_id)
        .where(task_outputs.c.job_id == job_id,
               sa.or_(task_outputs.c.task_id.is_(None),
                      task_outputs.c.attempt == tasks.c.attempt))
        .group_by(task_outputs.c.path)
    )
    return list(conn.execute(
        sa.select(task_outputs.c.path, task_outputs.c.sha256, task_outputs.c.size,
                  task_outputs.c.task_id)
        .where(task_outputs.c.job_id == job_id, task_outputs.c.id.in_(latest))
        .order_by(task_outputs.c.path)
    ))


def insert_log_lines(conn: sa.Connection, *, job_id: int, task_id: int, attempt: int,
                     lines: Sequence[str], now: float) -> None:
    if lines:
        for part in _chunks(list(lines)):
            conn.execute(task_logs.insert(), [
                {"job_id": job_id, "task_id": task_id, "attempt": attempt, "at": now,
                 "line": line} for line in part])


def log_lines(conn: sa.Connection, *, job_id: int, task_id: int | None, after_id: int,
              limit: int) -> list[Row]:
    query = sa.select(task_logs).where(task_logs.c.job_id == job_id, task_logs.c.id > after_id)
    if task_id is not None:
        query = query.where(task_logs.c.task_id == task_id)
    return list(conn.execute(query.order_by(task_logs.c.id).limit(limit)))


def task_log_chars(conn: sa.Connection, task_id: int) -> int:
    """Characters of log stored for a task, all attempts together."""
    return int(conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(task_logs.c.line)), 0))
        .where(task_logs.c.task_id == task_id)
    ).scalar_one())


def task_log_has_line(conn: sa.Connection, task_id: int, line: str) -> bool:
    return conn.execute(
        sa.select(task_logs.c.id).where(task_logs.c.task_id == task_id,
                                        task_logs.c.line == line).limit(1)
    ).first() is not None
