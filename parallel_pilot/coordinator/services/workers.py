"""The farm as users see it: each worker's state, current tasks, what it claims about
itself (labelled as claims) and what an admin decided about it; and those decisions
(approve a pending worker, trust or untrust one)."""

from __future__ import annotations

import logging

from parallel_pilot.coordinator.services.accounts import require_admin
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.core.protocol import Capabilities, WorkerClaims, WorkerInfo, WorkerState
from parallel_pilot.errors import Conflict, NotFound
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import copies as qc
from parallel_pilot.store.queries import workers as qw

log = logging.getLogger("pilot.workers")


def list_workers(svc: Services) -> list[WorkerInfo]:
    now = svc.clock()
    with svc.transaction() as conn:
        rows = q.list_workers(conn)
        leased = q.leased_task_ids_by_worker(conn)
        for worker_id, copied in qc.open_copy_task_ids(conn).items():  # backup copies
            leased[worker_id] = sorted([*leased.get(worker_id, []), *copied])
    out = []
    for w in rows:
        state: WorkerState
        current = leased.get(w.id, [])
        if w.revoked_at is not None:
            state = "revoked"
        elif w.left_at is not None or now - w.last_seen > svc.settings.offline_seconds:
            state = "offline"
        elif w.pending:
            state = "pending"
        else:
            state = "busy" if current else "idle"
        caps = Capabilities.model_validate(w.capabilities)
        out.append(WorkerInfo(
            id=w.id, name=w.name, state=state, capabilities=caps,
            claimed=WorkerClaims(sandbox=caps.sandbox, render_sandbox=caps.render_sandbox,
                                 gpus=len(caps.gpus),
                                 render_gpus=sum(d.type != "CPU" for d in caps.render_devices)),
            trusted=bool(w.trusted), slots=w.slots,
            gpu_slots=w.gpu_slots if w.gpu_slots is not None else len(caps.gpus),
            join_token_id=w.join_token_id,
            paused_until=w.paused_until if (w.paused_until or 0) > now else None,
            current_tasks=current, tasks_done=w.tasks_done, last_seen=w.last_seen,
            created_at=w.created_at,
        ))
    return out


def approve(svc: Services, caller: Caller, worker_id: int) -> None:
    """Let a worker that joined with an approval-required join token get tasks (admin)."""
    require_admin(caller)
    with svc.transaction() as conn:
        row = q.get_worker(conn, worker_id)
        if row is None:
            raise NotFound(f"no worker {worker_id}")
        if not qw.approve_worker(conn, worker_id):
            raise Conflict(f"worker {worker_id} is not waiting for approval")
    svc.worker_cache.forget(worker_id)
    log.info("%s approved worker %s (%d)", caller.name, row.name, worker_id)
    svc.notifier.notify()  # its long poll may find work now


def set_trusted(svc: Services, caller: Caller, worker_id: int, trusted: bool) -> None:
    """Vouch for a worker (admin): its sandbox claim is believed (``sandbox`` jobs lease
    to it), its "a retry cannot help" is final, its failures count against itself only;
    or take that back."""
    require_admin(caller)
    with svc.transaction() as conn:
        row = q.get_worker(conn, worker_id)
        if row is None:
            raise NotFound(f"no worker {worker_id}")
        qw.set_worker_trusted(conn, worker_id, trusted)
    svc.worker_cache.forget(worker_id)
    log.info("%s marked worker %s (%d) %s", caller.name, row.name, worker_id,
             "trusted" if trusted else "untrusted")
    if trusted:
        svc.notifier.notify()
