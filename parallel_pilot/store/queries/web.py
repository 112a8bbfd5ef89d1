"""Reads the web dashboard needs beyond the API's: outputs counted by folder, one output
of a job by its hash, and the newest lines of a task's log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.store.queries._common import Row, _chunks
from parallel_pilot.store.tables import task_logs, task_outputs, tasks

# an output counts when it is job-level or made by the attempt that holds/finished its task
_CURRENT = sa.or_(task_outputs.c.task_id.is_(None), task_outputs.c.attempt == tasks.c.attempt)


def output_counts_under(conn: sa.Connection, job_ids: Sequence[int],
                        prefix: str) -> dict[int, int]:
    """Distinct current output paths under ``prefix`` (e.g. ``frames/``) per job."""
    out: dict[int, int] = {j: 0 for j in job_ids}
    for part in _chunks(list(job_ids)):
        for job_id, count in conn.execute(
            sa.select(task_outputs.c.job_id, sa.func.count(sa.distinct(task_outputs.c.path)))
            .outerjoin(tasks, tasks.c.id == task_outputs.c.task_id)
            .where(task_outputs.c.job_id.in_(part), task_outputs.c.path.startswith(prefix),
                   _CURRENT)
            .group_by(task_outputs.c.job_id)
        ):
            out[job_id] = int(count)
    return out


def job_output_by_sha(conn: sa.Connection, job_id: int, sha256: str) -> Row | None:
    """One current output of the job with these bytes (path, size), if any."""
    query: sa.Select[Any] = (
        sa.select(task_outputs.c.path, task_outputs.c.size)
        .outerjoin(tasks, tasks.c.id == task_outputs.c.task_id)
        .where(task_outputs.c.job_id == job_id, task_outputs.c.sha256 == sha256, _CURRENT)
        .limit(1)
    )
    return conn.execute(query).first()


def log_tail(conn: sa.Connection, job_id: int, task_id: int, limit: int) -> list[Row]:
    """The newest ``limit`` log lines of a task (all attempts), oldest first."""
    rows = list(conn.execute(
        sa.select(task_logs).where(task_logs.c.job_id == job_id, task_logs.c.task_id == task_id)
        .order_by(task_logs.c.id.desc()).limit(limit)
    ))
    return rows[::-1]
