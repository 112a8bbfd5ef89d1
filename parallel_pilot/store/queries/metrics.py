"""Counts for ``/metrics``: tasks per state (from the jobs' per-state counters, which the
database keeps in step with the tasks) and jobs per state."""

from __future__ import annotations

import sqlalchemy as sa

from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.store.tables import jobs

_TASK_COUNTS = sa.select(*(sa.func.coalesce(sa.func.sum(jobs.c[f"count_{s}"]), 0)
                           for s in TaskState))
_JOB_COUNTS = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)


def task_counts(conn: sa.Connection) -> dict[str, int]:
    """Tasks of every job per state (every state, 0 where none)."""
    row = conn.execute(_TASK_COUNTS).one()
    return {str(state): int(n) for state, n in zip(TaskState, row, strict=True)}


def job_counts(conn: sa.Connection) -> dict[str, int]:
    """Jobs per state (every state, 0 where none)."""
    found = {str(state): int(n) for state, n in conn.execute(_JOB_COUNTS)}
    return {str(state): found.get(str(state), 0) for state in JobState}
