"""A job's ``waiting_reason``: for a job with ready tasks and none leased, why no online
worker takes them (``core.waiting.explain`` over the online workers' capabilities).
Cheap by construction: nothing is read for a job that has a task leased or none ready,
the online workers are read once per list of jobs, and one ready task per job stands
for its requirements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa

from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.core.protocol import Capabilities
from parallel_pilot.core.requirements import Requirements
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.core.waiting import OnlineWorker, explain
from parallel_pilot.store.queries import matching as qm
from parallel_pilot.store.queries import workers as qw

MAX_EXPLAINED = 100  # jobs of one list whose waiting is explained (the rest get None)


def waiting_reasons(conn: sa.Connection, svc: Services, rows: Sequence[sa.Row],
                    counts: Mapping[int, Mapping[str, int]]) -> dict[int, str]:
    """job id -> why it waits, for the jobs of ``rows`` that wait on no worker."""
    waiting = [r for r in rows if r.state in (JobState.QUEUED, JobState.RUNNING)
               and not counts.get(r.id, {}).get(TaskState.LEASED)
               and counts.get(r.id, {}).get(TaskState.READY)][:MAX_EXPLAINED]
    if not waiting:
        return {}
    online = [OnlineWorker(Capabilities.model_validate(w.capabilities), trusted=bool(w.trusted),
                           pending=bool(w.pending))
              for w in qw.online_workers(conn, svc.clock() - svc.settings.offline_seconds)]
    ready = {r.id: qm.waiting_task(conn, r.id) for r in waiting}
    sets = qm.set_requirements(conn, [t.requirement_set_id for t in ready.values()
                                      if t is not None and t.requirement_set_id])
    out: dict[int, str] = {}
    for job_id, task in ready.items():
        if task is None:
            continue
        needs = Requirements.model_validate(sets.get(task.requirement_set_id) or {})
        reason = explain(task.kind, needs, online)
        if reason is not None:
            out[job_id] = reason
    return out
