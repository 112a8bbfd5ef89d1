"""The statement that ranks users for a claim (fair share, issue 15): each user with ready
work, how many tasks it holds leased now (prefetch grants included), and since when it has
waited, furthest below its share first. Read from the job rows' task counts (kept by
0006's triggers), so it costs one row per active job, not one per task."""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa

from parallel_pilot.core.states import JobState
from parallel_pilot.store.tables import jobs

_ACTIVE = (JobState.QUEUED, JobState.RUNNING)  # a job whose tasks may be ready or leased


class OwnerQueue(NamedTuple):
    owner_id: int
    running: int  # its tasks leased now, on every worker (prefetched ones included)
    waiting_since: float  # submission time of its oldest job that has ready tasks


_RUNNING = sa.func.sum(jobs.c.count_leased)
_WAITING_SINCE = sa.func.min(sa.case((jobs.c.count_ready > 0, jobs.c.created_at)))
_OWNER_QUEUES = (sa.select(jobs.c.owner_id, _RUNNING.label("running"),
                           _WAITING_SINCE.label("waiting_since"))
                 .where(jobs.c.state.in_(_ACTIVE))
                 .group_by(jobs.c.owner_id)
                 .having(sa.func.sum(jobs.c.count_ready) > 0)
                 .order_by(_RUNNING, _WAITING_SINCE, jobs.c.owner_id))


def owner_queues(conn: sa.Connection) -> list[OwnerQueue]:
    """Users with ready tasks, in fair-share order: fewest running first, then the one
    whose oldest waiting job is oldest, then the lower user id."""
    return [OwnerQueue(int(o), int(r or 0), float(w)) for o, r, w in conn.execute(_OWNER_QUEUES)]
