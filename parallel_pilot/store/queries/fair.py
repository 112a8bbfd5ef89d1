"""Fair share across users (issue 15): the statement that ranks users for a claim.

The policy (docs/architecture.md, "Scheduling: fairness"), applied by ``claim_candidates``:
among the tasks a worker can run (kinds, requirement sets, jobs it is not blocked from),
the next task goes to the user with the fewest tasks leased now (running and prefetched
alike), equal shares; within one claim the k-th task of user u ranks ``running(u) + k``;
ties go to the user whose oldest job with ready tasks is oldest, then the lower user id;
a user's own tasks go by priority, then older job, then task order.

Here: each user with ready work, its leased count and since when it has waited, furthest
below its share first. Read from the job rows' task counts (kept by 0006's triggers), so
it costs one row per active job, not one per task."""

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
