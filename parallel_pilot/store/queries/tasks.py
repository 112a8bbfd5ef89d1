"""Tasks: insert with dependencies, the per-dialect claim, leases, reports, reaping, retry."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.states import TaskState
from parallel_pilot.errors import InvalidTransition
from parallel_pilot.store.queries._common import Row, _chunks
from parallel_pilot.store.queries.jobs import adjust_job_counts
from parallel_pilot.store.queries.moves import task_move
from parallel_pilot.store.queries.sync import with_requirement_sets
from parallel_pilot.store.queries.verdicts import forget_failure_reasons, forget_nonretryable
from parallel_pilot.store.tables import (
    jobs,
    task_deps,
    tasks,
    workers,
)

# every state write of this module, checked against the transition table at import
LEASE = task_move(TaskState.LEASED, TaskState.READY)  # a claim
COMPLETE = task_move(TaskState.DONE, TaskState.LEASED)  # a report from the holder
REQUEUE = task_move(TaskState.READY, TaskState.LEASED)  # expiry, hand-back, retryable failure
FAIL = task_move(TaskState.FAILED, TaskState.LEASED)  # a failure for good
UNBLOCK = task_move(TaskState.READY, TaskState.BLOCKED)  # its last dependency is done
CANCEL = task_move(TaskState.CANCELLED)  # every open task: blocked, ready or leased
INITIAL_STATES = (TaskState.BLOCKED, TaskState.READY)  # a task is planned waiting or ready
REOPEN = {target: task_move(target, TaskState.FAILED, TaskState.CANCELLED)  # retry
          for target in (TaskState.READY, TaskState.BLOCKED)}


def insert_tasks(conn: sa.Connection, job_id: int, rows: list[dict[str, Any]]) -> list[int]:
    """Insert a job's tasks (each dict: idx, name, kind, state, priority, payload, inputs,
    deps_left, max_attempts); returns their ids in ``idx`` order."""
    planned = Counter(str(r["state"]) for r in rows)
    if set(planned) - set(INITIAL_STATES):
        raise InvalidTransition(f"a task starts {' or '.join(INITIAL_STATES)}, not "
                                f"{', '.join(sorted(set(planned) - set(INITIAL_STATES)))}")
    rows = with_requirement_sets(conn, rows)  # claims filter on the set id (issue 13)
    # claims read each owner's queue apart (fair share, issue 15)
    owner_id = conn.execute(sa.select(jobs.c.owner_id).where(jobs.c.id == job_id)).scalar_one()
    for part in _chunks(rows):
        conn.execute(tasks.insert(), [
            {**r, "job_id": job_id, "owner_id": owner_id, "attempt": 0, "failures": 0,
             "losses": 0} for r in part])
    adjust_job_counts(conn, {job_id: planned})
    return list(conn.execute(
        sa.select(tasks.c.id).where(tasks.c.job_id == job_id).order_by(tasks.c.idx)
    ).scalars())


def insert_task_deps(conn: sa.Connection, pairs: list[tuple[int, int]]) -> None:
    for part in _chunks(pairs):
        conn.execute(task_deps.insert(),
                     [{"task_id": t, "depends_on_id": d} for t, d in part])


def get_task(conn: sa.Connection, task_id: int) -> Row | None:
    return conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()


def get_tasks(conn: sa.Connection, task_ids: Sequence[int]) -> list[Row]:
    out: list[Row] = []
    for part in _chunks(list(task_ids)):
        out.extend(conn.execute(sa.select(tasks).where(tasks.c.id.in_(part))))
    return sorted(out, key=lambda r: r.id)


def task_id_at(conn: sa.Connection, job_id: int, idx: int) -> int | None:
    """The id of the task at ``idx`` (0-based) in the job's plan; users call it task
    ``idx + 1``."""
    return conn.execute(
        sa.select(tasks.c.id).where(tasks.c.job_id == job_id, tasks.c.idx == idx)
    ).scalar_one_or_none()


def list_tasks(conn: sa.Connection, job_id: int) -> list[Row]:
    return list(conn.execute(
        sa.select(tasks, workers.c.name.label("worker_name"))
        .outerjoin(workers, workers.c.id == tasks.c.worker_id)
        .where(tasks.c.job_id == job_id).order_by(tasks.c.idx)
    ))


def claimable_tasks(conn: sa.Connection, *, kinds: Sequence[str], exclude_jobs: Sequence[int],
                    limit: int, lock: bool) -> list[Row]:
    """Ready tasks (id, requirements) of the given kinds, best first; with ``lock``
    (PostgreSQL, MariaDB) the rows are locked with ``FOR UPDATE SKIP LOCKED`` so concurrent
    claims pass each other by. SQLite has no row locks: there the caller's
    ``BEGIN IMMEDIATE`` serialises claims."""
    query = (sa.select(tasks.c.id, tasks.c.requirements, tasks.c.job_id, tasks.c.priority,
                       tasks.c.affinity)
             .where(tasks.c.state == TaskState.READY, tasks.c.kind.in_(list(kinds)))
             .order_by(tasks.c.priority.desc(), tasks.c.id).limit(limit))
    if exclude_jobs:
        query = query.where(tasks.c.job_id.not_in(list(exclude_jobs)))
    if lock:
        query = query.with_for_update(skip_locked=True)
    return list(conn.execute(query))


def lease_tasks(conn: sa.Connection, task_ids: Sequence[int], *, worker_id: int, now: float,
                expires_at: float) -> list[Row]:
    """Move ready tasks to leased under a new attempt; returns the rows actually leased."""
    if not task_ids:
        return []
    conn.execute(
        tasks.update().where(tasks.c.id.in_(list(task_ids)), LEASE.where)
        .values(**LEASE.values(attempt=tasks.c.attempt + 1, worker_id=worker_id,
                               lease_expires_at=expires_at, progress=None, message=None,
                               leased_at=now,
                               started_at=sa.func.coalesce(tasks.c.started_at, now)))
    )
    return [r for r in get_tasks(conn, task_ids)
            if r.state == TaskState.LEASED and r.worker_id == worker_id]


def _held(task_id: int, attempt: int, worker_id: int) -> sa.ColumnElement[bool]:
    """The attempt, held by the worker (the caller adds the state it must be leased in)."""
    return sa.and_(tasks.c.id == task_id, tasks.c.attempt == attempt,
                   tasks.c.worker_id == worker_id)


def extend_lease(conn: sa.Connection, task_id: int, attempt: int, worker_id: int,
                 expires_at: float, progress: float | None, message: str | None) -> bool:
    values: dict[str, Any] = {"lease_expires_at": expires_at}
    if progress is not None:
        values["progress"] = progress
    if message is not None:
        values["message"] = message[:1000]
    return bool(conn.execute(
        tasks.update().where(_held(task_id, attempt, worker_id),
                             tasks.c.state == TaskState.LEASED).values(**values)).rowcount)


def complete_task(conn: sa.Connection, task_id: int, attempt: int, worker_id: int,
                  result: dict[str, Any], now: float) -> bool:
    return bool(conn.execute(
        tasks.update().where(_held(task_id, attempt, worker_id), COMPLETE.where)
        .values(**COMPLETE.values(result=result, progress=1.0, finished_at=now,
                                  lease_expires_at=None, error=None))
    ).rowcount)


def requeue_task(conn: sa.Connection, task_id: int, attempt: int, *, count_failure: bool,
                 error: str | None) -> bool:
    """leased -> ready for another attempt (optionally counting a failure)."""
    values = REQUEUE.values(worker_id=None, lease_expires_at=None, progress=None)
    if count_failure:
        values["failures"] = tasks.c.failures + 1
    if error is not None:
        values["error"] = error
    return bool(conn.execute(
        tasks.update().where(tasks.c.id == task_id, tasks.c.attempt == attempt,
                             REQUEUE.where).values(**values)
    ).rowcount)


def fail_task(conn: sa.Connection, task_id: int, attempt: int, error: str, now: float) -> bool:
    """leased -> failed for good."""
    return bool(conn.execute(
        tasks.update().where(tasks.c.id == task_id, tasks.c.attempt == attempt, FAIL.where)
        .values(**FAIL.values(failures=tasks.c.failures + 1, error=error, finished_at=now,
                              lease_expires_at=None))
    ).rowcount)


def extend_all_leases(conn: sa.Connection, expires_at: float) -> int:
    """Give every held lease until at least ``expires_at`` (a coordinator restart)."""
    return conn.execute(
        tasks.update().where(tasks.c.state == TaskState.LEASED,
                             tasks.c.lease_expires_at < expires_at)
        .values(lease_expires_at=expires_at)
    ).rowcount


def expired_leases(conn: sa.Connection, now: float, limit: int) -> list[Row]:
    return list(conn.execute(
        sa.select(tasks.c.id, tasks.c.job_id, tasks.c.attempt, tasks.c.failures,
                  tasks.c.max_attempts, tasks.c.worker_id, tasks.c.losses, tasks.c.kind,
                  tasks.c.idx, tasks.c.name)
        .where(tasks.c.state == TaskState.LEASED, tasks.c.lease_expires_at < now)
        .order_by(tasks.c.lease_expires_at).limit(limit)
    ))


def unblock_dependents(conn: sa.Connection, task_id: int) -> list[int]:
    """One dependency of each dependent of ``task_id`` is done: count it down and make
    ready the dependents with none left; returns the dependents' ids."""
    dependents = list(conn.execute(
        sa.select(task_deps.c.task_id).where(task_deps.c.depends_on_id == task_id)).scalars())
    if not dependents:
        return dependents
    conn.execute(tasks.update().where(tasks.c.id.in_(dependents))
                 .values(deps_left=tasks.c.deps_left - 1))
    conn.execute(
        tasks.update().where(tasks.c.id.in_(dependents), tasks.c.deps_left <= 0, UNBLOCK.where)
        .values(**UNBLOCK.values())
    )
    return dependents


def cancel_open_tasks(conn: sa.Connection, job_id: int, now: float, reason: str) -> int:
    """Every task of the job not yet finished -> cancelled (a leased one's worker is told
    to stop at its next heartbeat)."""
    return conn.execute(
        tasks.update().where(tasks.c.job_id == job_id, CANCEL.where)
        .values(**CANCEL.values(finished_at=now, lease_expires_at=None,
                                error=sa.func.coalesce(tasks.c.error, reason)))
    ).rowcount


def reopenable_tasks(conn: sa.Connection, job_id: int) -> list[int]:
    return list(conn.execute(
        sa.select(tasks.c.id).where(tasks.c.job_id == job_id,
                                    tasks.c.state.in_([TaskState.FAILED, TaskState.CANCELLED]),
                                    tasks.c.skipped.is_(False))  # a quorum went on without it
    ).scalars())


def unmet_dependency_counts(conn: sa.Connection, task_ids: Sequence[int]) -> dict[int, int]:
    dep = tasks.alias("dep")
    out: dict[int, int] = {}
    for part in _chunks(list(task_ids)):
        for task_id, unmet in conn.execute(
            sa.select(task_deps.c.task_id, sa.func.count())
            .join(dep, dep.c.id == task_deps.c.depends_on_id)
            # a dep its quorum went on without is settled: it is not waited for again
            .where(task_deps.c.task_id.in_(part), dep.c.state != TaskState.DONE,
                   dep.c.skipped.is_(False))
            .group_by(task_deps.c.task_id)
        ):
            out[task_id] = unmet
    return out


def reopen_tasks(conn: sa.Connection, task_ids: Sequence[int], deps_left: int) -> None:
    """Retry: failed or cancelled tasks go back to ready (no unmet dependencies) or blocked."""
    move = REOPEN[TaskState.READY if deps_left == 0 else TaskState.BLOCKED]
    for part in _chunks(list(task_ids)):
        conn.execute(
            tasks.update().where(tasks.c.id.in_(part), move.where)
            .values(**move.values(failures=0, losses=0, error=None, finished_at=None,
                                  worker_id=None, progress=None, deps_left=deps_left,
                                  deadline_at=None))
        )
        forget_nonretryable(conn, part)  # the owner retries: workers' words start afresh
        forget_failure_reasons(conn, part)


def cancel_job_tasks(conn: sa.Connection, job_id: int, task_ids: Sequence[int], now: float,
                     reason: str) -> list[int]:
    """The named tasks of the job that are not finished -> cancelled (a leased one's worker
    is told to stop at its next heartbeat); returns the ids actually cancelled."""
    cancelled: list[int] = []
    for part in _chunks(sorted(set(task_ids))):
        ids = list(conn.execute(
            sa.select(tasks.c.id).where(tasks.c.job_id == job_id, tasks.c.id.in_(part),
                                        CANCEL.where)).scalars())
        if not ids:
            continue
        conn.execute(
            tasks.update().where(tasks.c.id.in_(ids), CANCEL.where)
            .values(**CANCEL.values(finished_at=now, lease_expires_at=None, error=reason))
        )
        cancelled.extend(ids)
    return cancelled


def tasks_with_dependents(conn: sa.Connection, task_ids: Sequence[int]) -> list[int]:
    """Those of ``task_ids`` that other tasks depend on."""
    found: set[int] = set()
    for part in _chunks(sorted(set(task_ids))):
        found.update(conn.execute(
            sa.select(task_deps.c.depends_on_id).where(task_deps.c.depends_on_id.in_(part))
        ).scalars())
    return sorted(found)
