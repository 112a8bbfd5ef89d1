"""The statements of a job's stream of finished tasks (``coordinator/task_stream.py``): a
small look at the job that says whether anything may have finished, the ids of tasks
finished since a time, and those tasks in full."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from parallel_pilot.core.states import TaskState
from parallel_pilot.store.queries._common import Row, _chunks, _states
from parallel_pilot.store.tables import jobs, tasks, workers

FINISHED = _states(s for s in TaskState if s.finished)
_MARKER = [jobs.c.owner_id, jobs.c.state, jobs.c.error, jobs.c.tasks_done]


def job_marker(conn: sa.Connection, job_id: int) -> Row | None:
    """The job's owner, state, error and done count (no parameters: a python job's run
    to megabytes); a change of any of them means tasks may have finished."""
    return conn.execute(
        sa.select(*_MARKER).where(jobs.c.id == job_id)
    ).first()


def finished_task_ids(conn: sa.Connection, job_id: int, since: float | None) -> list[Row]:
    """(id, finished_at) of the job's finished tasks, those finished at ``since`` or later
    when given."""
    query = (sa.select(tasks.c.id, tasks.c.finished_at)
             .where(tasks.c.job_id == job_id, tasks.c.state.in_(FINISHED),
                    tasks.c.finished_at.is_not(None)))
    if since is not None:
        query = query.where(tasks.c.finished_at >= since)
    return list(conn.execute(query))


def tasks_by_id(conn: sa.Connection, task_ids: Sequence[int]) -> list[Row]:
    """The tasks with these ids, with the name of the worker that holds each, by id."""
    rows: list[Row] = []
    for part in _chunks(list(task_ids)):
        rows.extend(conn.execute(
            sa.select(tasks, workers.c.name.label("worker_name"))
            .outerjoin(workers, workers.c.id == tasks.c.worker_id)
            .where(tasks.c.id.in_(list(part)))))
    return sorted(rows, key=lambda r: r.id)
