"""The statements of adaptive chunks (``coordinator/services/chunking.py``): what a job's
finished and open tasks say, and cutting a leased task in two (the leased attempt keeps
the head; the rest becomes a new ready task of the same job, with the same inputs,
requirements and dependents, numbered after the job's last task).

The caller holds the job's row lock (``lock_job``) while it cuts, so two exchanges never
number two new tasks of one job alike; the write to the claimed task is fenced by (task,
attempt, ready) and its row is locked by the claim."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.states import TaskState
from parallel_pilot.store.queries._common import Row
from parallel_pilot.store.queries.jobs import adjust_job_counts
from parallel_pilot.store.tables import jobs, task_deps, task_outputs, tasks

_b = sa.bindparam

_FINISHED = (sa.select(tasks.c.id, tasks.c.worker_id, tasks.c.payload, tasks.c.leased_at,
                       tasks.c.finished_at)
             .where(tasks.c.job_id == _b("j"), tasks.c.state == TaskState.DONE,
                    tasks.c.kind == _b("kind"), tasks.c.leased_at.is_not(None),
                    tasks.c.worker_id.is_not(None))
             .order_by(tasks.c.finished_at.desc(), tasks.c.id.desc())
             .limit(_b("limit")))


def finished_chunks(conn: sa.Connection, job_id: int, kind: str, limit: int) -> list[Row]:
    """The job's latest ``limit`` done tasks of ``kind`` with the worker that did them and
    the lease and finish times of the attempt that did (id, worker_id, payload, leased_at,
    finished_at), newest first."""
    return list(conn.execute(_FINISHED, {"j": job_id, "kind": kind, "limit": limit}))


_OPEN = (sa.select(tasks.c.id, tasks.c.state, tasks.c.worker_id, tasks.c.payload,
                   tasks.c.leased_at)
         .where(tasks.c.job_id == _b("j"), tasks.c.kind == _b("kind"),
                tasks.c.state.in_([TaskState.READY, TaskState.LEASED]))
         .order_by(tasks.c.id))


def open_chunks(conn: sa.Connection, job_id: int, kind: str) -> list[Row]:
    """The job's ready and leased tasks of ``kind`` (id, state, worker_id, payload,
    leased_at)."""
    return list(conn.execute(_OPEN, {"j": job_id, "kind": kind}))


_UNIT_OUTPUTS = (sa.select(task_outputs.c.task_id, task_outputs.c.path,
                           task_outputs.c.created_at)
                 .select_from(task_outputs.join(tasks, sa.and_(
                     tasks.c.id == task_outputs.c.task_id,
                     tasks.c.attempt == task_outputs.c.attempt)))
                 .where(task_outputs.c.job_id == _b("j"), tasks.c.kind == _b("kind"),
                        tasks.c.state.in_([TaskState.DONE, TaskState.LEASED])))


def attempt_outputs(conn: sa.Connection, job_id: int, kind: str) -> list[Row]:
    """The outputs the current attempts of the job's done and leased tasks of ``kind``
    reported (task_id, path, created_at): when each frame arrived, on the coordinator's
    clock."""
    return list(conn.execute(_UNIT_OUTPUTS, {"j": job_id, "kind": kind}))


def lock_job(conn: sa.Connection, job_id: int) -> Row | None:
    """The job's row (id, tasks_total, state), locked to this transaction on server
    databases (SQLite's writer lock is held already)."""
    query: Any = sa.select(jobs.c.id, jobs.c.tasks_total, jobs.c.state).where(
        jobs.c.id == job_id)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row: Row | None = conn.execute(query).first()
    return row


_SET_PART = (tasks.update()
             .where(tasks.c.id == _b("t"), tasks.c.attempt == _b("a"),
                    tasks.c.state == TaskState.READY)
             .values(name=_b("name"), payload=_b("payload", type_=sa.JSON)))


def set_claimed_part(conn: sa.Connection, task_id: int, attempt: int, name: str,
                     payload: dict[str, Any]) -> bool:
    """A ready task this transaction claimed (its row locked) keeps only ``payload`` (its
    head), named ``name``, before it is leased; fenced by its attempt number."""
    return conn.execute(_SET_PART, {"t": task_id, "a": attempt, "name": name[:200],
                                    "payload": payload}).rowcount > 0


_COPIED = ("kind", "priority", "inputs", "requirements", "requirement_set_id", "owner_id",
           "max_attempts", "affinity")  # what the rest takes from the task it was cut from


def insert_rest(conn: sa.Connection, source: Row, name: str, payload: dict[str, Any]) -> int:
    """The rest of ``source`` (a full task row) as a new ready task numbered after the
    job's last, depended on by every task that depends on ``source``; the job's counters
    follow (its total, its ready count, each dependent's ``deps_left``). Returns its id."""
    idx = conn.execute(sa.select(sa.func.max(tasks.c.idx))
                       .where(tasks.c.job_id == source.job_id)).scalar_one()
    values = {c: getattr(source, c) for c in _COPIED}
    inserted = conn.execute(tasks.insert().values(
        **values, job_id=source.job_id, idx=int(idx) + 1, name=name[:200],
        state=TaskState.READY, payload=payload, deps_left=0, attempt=0, failures=0,
        losses=0)).inserted_primary_key
    assert inserted is not None
    new_id = inserted[0]
    adjust_job_counts(conn, {source.job_id: {TaskState.READY: 1}})
    conn.execute(jobs.update().where(jobs.c.id == source.job_id)
                 .values(tasks_total=jobs.c.tasks_total + 1))
    dependents = list(conn.execute(sa.select(task_deps.c.task_id)
                                   .where(task_deps.c.depends_on_id == source.id)).scalars())
    if dependents:
        conn.execute(task_deps.insert(), [{"task_id": t, "depends_on_id": new_id}
                                          for t in dependents])
        conn.execute(tasks.update().where(tasks.c.id.in_(dependents))
                     .values(deps_left=tasks.c.deps_left + 1))
    return int(new_id)


def has_quorum_dependents(conn: sa.Connection, task_id: int) -> bool:
    """Whether a task that depends on this one waits for a quorum (not cut: a quorum
    counts its dependencies as planned)."""
    return conn.execute(
        sa.select(tasks.c.id).join(task_deps, task_deps.c.task_id == tasks.c.id)
        .where(task_deps.c.depends_on_id == task_id, tasks.c.quorum.is_not(None)).limit(1)
    ).first() is not None
