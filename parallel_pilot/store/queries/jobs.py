"""Jobs: insert, read, state changes, and the per-job aggregates of their tasks (counts by
state, running progress, failed sweep items, final failures)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.store.queries._common import Row, _chunks, _new_id
from parallel_pilot.store.queries.moves import job_move
from parallel_pilot.store.queries.verdicts import final_attempt_said_nonretryable
from parallel_pilot.store.tables import (
    jobs,
    tasks,
    users,
)


def insert_job(conn: sa.Connection, *, owner_id: int, name: str, kind: str,
               params: dict[str, Any], priority: int, max_attempts: int, tasks_total: int,
               now: float, idempotency_key: str | None = None) -> int:
    result = conn.execute(jobs.insert().values(
        owner_id=owner_id, name=name, kind=kind, params=params, state=JobState.QUEUED,
        priority=priority, max_attempts=max_attempts, created_at=now, tasks_total=tasks_total,
        tasks_done=0, idempotency_key=idempotency_key,
    ))
    return _new_id(result)


def job_params(conn: sa.Connection, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The stored parameters of these jobs (id -> params)."""
    out: dict[int, dict[str, Any]] = {}
    for part in _chunks(sorted(set(job_ids))):
        out.update((job_id, params) for job_id, params in conn.execute(
            sa.select(jobs.c.id, jobs.c.params).where(jobs.c.id.in_(part))))
    return out


def job_id_by_idempotency_key(conn: sa.Connection, owner_id: int, key: str) -> int | None:
    """The job the owner's submission with this ``Idempotency-Key`` made, if any."""
    return conn.execute(
        sa.select(jobs.c.id).where(jobs.c.owner_id == owner_id, jobs.c.idempotency_key == key)
    ).scalar_one_or_none()


# every job state write of this module, checked against the transition table at import
MOVES = {target: job_move(target) for target in JobState}  # set_job_state: any allowed source
START = job_move(JobState.RUNNING, JobState.QUEUED)  # its first task was leased

_JOB_COLUMNS = [*jobs.c, users.c.name.label("owner")]


def get_job(conn: sa.Connection, job_id: int) -> Row | None:
    return conn.execute(
        sa.select(*_JOB_COLUMNS).join(users, users.c.id == jobs.c.owner_id)
        .where(jobs.c.id == job_id)
    ).first()


def list_jobs(conn: sa.Connection, *, owner_id: int | None, state: str | None,
              limit: int) -> list[Row]:
    query = sa.select(*_JOB_COLUMNS).join(users, users.c.id == jobs.c.owner_id)
    if owner_id is not None:
        query = query.where(jobs.c.owner_id == owner_id)
    if state is not None:
        query = query.where(jobs.c.state == state)
    return list(conn.execute(query.order_by(jobs.c.id.desc()).limit(limit)))


def set_job_state(conn: sa.Connection, job_id: int, target: JobState, now: float,
                  error: str | None = None) -> bool:
    move = MOVES[target]
    values: dict[str, Any] = {}
    if target.finished:
        values.update(finished_at=now, error=error)
    elif target == JobState.QUEUED:
        values.update(finished_at=None, error=None)
    return bool(conn.execute(
        jobs.update().where(jobs.c.id == job_id, move.where).values(**move.values(**values))
    ).rowcount)


def mark_job_running(conn: sa.Connection, job_ids: Iterable[int], now: float) -> None:
    ids = sorted(set(job_ids))
    if ids:
        conn.execute(
            jobs.update().where(jobs.c.id.in_(ids), START.where)
            .values(**START.values(started_at=sa.func.coalesce(jobs.c.started_at, now)))
        )


def add_job_done(conn: sa.Connection, job_id: int, delta: int = 1) -> None:
    conn.execute(jobs.update().where(jobs.c.id == job_id)
                 .values(tasks_done=jobs.c.tasks_done + delta))


COUNTED = {state: jobs.c[f"count_{state}"] for state in TaskState}  # per-state task counters


def adjust_job_counts(conn: sa.Connection, deltas: Mapping[int, Mapping[str, int]]) -> None:
    """Add ``{job id: {task state: delta}}`` to the jobs' task counters. Inserted tasks are
    counted this way; state changes of existing tasks are counted by the triggers of
    migration 0006 and must not be counted again here."""
    for job_id, by_state in deltas.items():
        values = {f"count_{TaskState(state)}": COUNTED[TaskState(state)] + n
                  for state, n in by_state.items() if n}
        if values:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))


def job_task_counts(row: Row) -> dict[str, int]:
    """The job's tasks in each state (states with none left out), from the counters on its
    row: no statement, whatever the number of tasks. Triggers on ``tasks`` keep them exact
    in the transaction of every task write (migration 0006)."""
    return {str(state): n for state in TaskState if (n := getattr(row, f"count_{state}"))}


def task_counts(conn: sa.Connection, job_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """The same counts as ``job_task_counts``, aggregated over the tasks (a check of the
    counters; a read of a job uses the row)."""
    out: dict[int, dict[str, int]] = {j: {} for j in job_ids}
    for part in _chunks(list(job_ids)):
        for job_id, state, n in conn.execute(
            sa.select(tasks.c.job_id, tasks.c.state, sa.func.count())
            .where(tasks.c.job_id.in_(part)).group_by(tasks.c.job_id, tasks.c.state)
        ):
            out[job_id][state] = n
    return out


def running_stats(conn: sa.Connection, job_id: int) -> Row:
    """Active workers and summed progress of a job's leased tasks."""
    return conn.execute(
        sa.select(sa.func.count(sa.distinct(tasks.c.worker_id)).label("workers"),
                  sa.func.coalesce(sa.func.sum(tasks.c.progress), 0.0).label("progress"))
        .where(tasks.c.job_id == job_id, tasks.c.state == TaskState.LEASED)
    ).one()


def failed_item_counts(conn: sa.Connection, job_ids: Sequence[int]) -> dict[int, int]:
    """Items of each job whose sweep result says the command failed, counted in one
    aggregate (no result leaves the database): a non-zero exit code, a time limit, or an
    ``error`` (could not start), the SQL mirror of ``kinds/sweep.py`` ``item_failure``.
    Jobs without such items are left out."""
    result = tasks.c.result
    failed = sa.or_(
        sa.func.coalesce(result["exit_code"].as_integer(), 0) != 0,
        sa.func.coalesce(result["timed_out"].as_boolean(), sa.false()).is_(sa.true()),
        result["error"].as_string().is_not(None),
    )
    out: dict[int, int] = {}
    for part in _chunks(sorted(set(job_ids))):
        for job_id, n in conn.execute(
            sa.select(tasks.c.job_id, sa.func.count())
            .where(tasks.c.job_id.in_(part), tasks.c.state == TaskState.DONE,
                   tasks.c.kind == "sweep", failed)
            .group_by(tasks.c.job_id)
        ):
            out[job_id] = n
    return out


def final_failure_counts(conn: sa.Connection, job_ids: Sequence[int]) -> dict[int, Row]:
    """Per job: its failed tasks (``failed``; those a quorum went on without left out) and
    how many of them failed with attempts left (``final``), which only a report that said
    retrying cannot help does (a retryable failure is requeued until its attempts are
    used up), or a report that said so on the task's last attempt (its worker's word
    not yet believed, the attempts ran out on it). Jobs without failed tasks are left out."""
    final = sa.case((sa.or_(tasks.c.failures < tasks.c.max_attempts,
                            final_attempt_said_nonretryable()), 1), else_=0)
    out: dict[int, Row] = {}
    for part in _chunks(sorted(set(job_ids))):
        for row in conn.execute(
            sa.select(tasks.c.job_id, sa.func.count().label("failed"),
                      sa.func.sum(final).label("final"))
            .where(tasks.c.job_id.in_(part), tasks.c.state == TaskState.FAILED,
                   tasks.c.skipped.is_(False))
            .group_by(tasks.c.job_id)
        ):
            out[row.job_id] = row
    return out
