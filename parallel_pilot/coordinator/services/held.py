"""The fence of every per-attempt request: the attempt a worker names must be the one it
holds now (upload grants, outputs, complete, fail, release, job outputs): the task's
current attempt, or a live backup copy of it (``services.stragglers``) where the request
is one a copy makes too (its inputs, uploads, outputs and job outputs; its reports go
through the exchange)."""

from __future__ import annotations

import sqlalchemy as sa

from parallel_pilot.core.states import TaskState
from parallel_pilot.errors import StaleAttempt, TaskNotFound
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import copies as qc


def held_task(conn: sa.Connection, worker: sa.Row, task_id: int, attempt: int, *,
              copies: bool = True) -> sa.Row:
    """The task (its row) of an attempt the worker holds, or ``StaleAttempt``; with
    ``copies`` a live backup copy counts as held (the row is still the task's)."""
    task = q.get_task(conn, task_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id}")
    if task.worker_id != worker.id or task.attempt != attempt:
        if copies and task.state == TaskState.LEASED and \
                qc.is_live_copy(conn, task_id, attempt, worker.id):
            return task
        if task.attempt == attempt and task.state == TaskState.READY:
            raise StaleAttempt(f"attempt {attempt} of task {task_id} lost its lease (no "
                               "heartbeat in time); the task is queued again")
        raise StaleAttempt(f"attempt {attempt} of task {task_id} is not held by this worker "
                           f"(the task is {task.state}, attempt {task.attempt})")
    return task


def held_running_task(conn: sa.Connection, worker: sa.Row, task_id: int,
                      attempt: int) -> sa.Row:
    """``held_task``, and still running (leased): what outputs may be added to."""
    task = held_task(conn, worker, task_id, attempt)
    if task.state != TaskState.LEASED:
        raise StaleAttempt(f"task {task_id} is {task.state}; outputs are not accepted")
    return task
