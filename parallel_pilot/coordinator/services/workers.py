"""The farm as users see it: each worker's state, current tasks and capabilities."""

from __future__ import annotations

from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.core.protocol import Capabilities, WorkerInfo, WorkerState
from parallel_pilot.store import queries as q


def list_workers(svc: Services) -> list[WorkerInfo]:
    now = svc.clock()
    with svc.transaction() as conn:
        rows = q.list_workers(conn)
        leased = q.leased_task_ids_by_worker(conn)
    out = []
    for w in rows:
        state: WorkerState
        current = leased.get(w.id, [])
        if w.revoked_at is not None:
            state = "revoked"
        elif w.left_at is not None or now - w.last_seen > svc.settings.offline_seconds:
            state = "offline"
        else:
            state = "busy" if current else "idle"
        out.append(WorkerInfo(
            id=w.id, name=w.name, state=state,
            capabilities=Capabilities.model_validate(w.capabilities), current_tasks=current,
            tasks_done=w.tasks_done, last_seen=w.last_seen, created_at=w.created_at,
        ))
    return out
