"""Quorum dependencies and worker affinity: the statements behind "ready once a quorum of
the dependencies is done and the deadline passed", and "prefer tasks like the last ones"."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from parallel_pilot.core.states import TaskState
from parallel_pilot.store.queries._common import Row, _chunks
from parallel_pilot.store.queries.moves import task_move
from parallel_pilot.store.tables import task_deps, tasks

OPEN_STATES = (TaskState.BLOCKED, TaskState.READY, TaskState.LEASED)
SKIP = task_move(TaskState.CANCELLED, *OPEN_STATES)  # left out of a quorum while open
RELEASE = task_move(TaskState.READY, TaskState.BLOCKED)  # its quorum is met


def _dependents_of(task_id: int) -> sa.Select:
    return sa.select(task_deps.c.task_id).where(task_deps.c.depends_on_id == task_id)


def start_quorum_deadlines(conn: sa.Connection, task_id: int, now: float) -> None:
    """A dependency of these tasks is done: the first one done starts each dependent's
    quorum deadline (``deadline_seconds`` from now)."""
    conn.execute(
        tasks.update().where(tasks.c.id.in_(_dependents_of(task_id)),
                             tasks.c.deadline_seconds.is_not(None),
                             tasks.c.deadline_at.is_(None))
        .values(deadline_at=now + tasks.c.deadline_seconds)
    )


def blocked_quorum_dependents(conn: sa.Connection, task_id: int) -> list[Row]:
    """Dependents of ``task_id`` that wait with a quorum (blocked, quorum set)."""
    return list(conn.execute(
        sa.select(tasks).where(tasks.c.id.in_(_dependents_of(task_id)),
                               tasks.c.quorum.is_not(None),
                               tasks.c.state == TaskState.BLOCKED)
    ))


def has_only_quorum_dependents(conn: sa.Connection, task_id: int) -> bool:
    """Whether the task has dependents and every one of them waits with a quorum (so the
    task failing need not fail its job)."""
    kinds = list(conn.execute(
        sa.select(tasks.c.quorum).where(tasks.c.id.in_(_dependents_of(task_id)))).scalars())
    return bool(kinds) and all(k is not None for k in kinds)


def dependency_states(conn: sa.Connection, task_id: int) -> list[Row]:
    """(id, state, skipped) of each task ``task_id`` depends on."""
    return list(conn.execute(
        sa.select(tasks.c.id, tasks.c.state, tasks.c.skipped)
        .join(task_deps, task_deps.c.depends_on_id == tasks.c.id)
        .where(task_deps.c.task_id == task_id).order_by(tasks.c.id)
    ))


def due_quorum_tasks(conn: sa.Connection, now: float, limit: int) -> list[Row]:
    """Blocked quorum tasks whose deadline has passed (the reaper looks at them)."""
    return list(conn.execute(
        sa.select(tasks).where(tasks.c.state == TaskState.BLOCKED,
                               tasks.c.quorum.is_not(None), tasks.c.deadline_at <= now)
        .order_by(tasks.c.deadline_at).limit(limit)
    ))


def skip_tasks(conn: sa.Connection, task_ids: Sequence[int], now: float, reason: str) -> int:
    """Leave tasks out of a quorum: open ones are cancelled (a leased one's worker is told
    to stop), failed ones stay failed; all are marked skipped. Returns how many were
    cancelled now."""
    cancelled = 0
    for part in _chunks(list(task_ids)):
        cancelled += conn.execute(
            tasks.update().where(tasks.c.id.in_(part), SKIP.where)
            .values(**SKIP.values(finished_at=now, lease_expires_at=None, error=reason,
                                  skipped=True))
        ).rowcount
        conn.execute(tasks.update().where(tasks.c.id.in_(part),
                                          tasks.c.state == TaskState.FAILED)
                     .values(skipped=True))
    return cancelled


def release_quorum_task(conn: sa.Connection, task_id: int) -> bool:
    """blocked -> ready with its quorum met (the deps left out no longer count)."""
    return bool(conn.execute(
        tasks.update().where(tasks.c.id == task_id, RELEASE.where)
        .values(**RELEASE.values(deps_left=0))
    ).rowcount)


def worker_recent_affinities(conn: sa.Connection, worker_id: int, job_ids: Sequence[int],
                             limit: int) -> list[tuple[int, str]]:
    """(job id, affinity key) of the tasks of these jobs this worker finished last, newest
    first."""
    return [(r.job_id, r.affinity) for r in conn.execute(
        sa.select(tasks.c.job_id, tasks.c.affinity)
        .where(tasks.c.worker_id == worker_id, tasks.c.state == TaskState.DONE,
               tasks.c.job_id.in_(list(job_ids)), tasks.c.affinity.is_not(None))
        .order_by(tasks.c.finished_at.desc()).limit(limit)
    )]
