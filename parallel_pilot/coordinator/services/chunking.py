"""Adaptive chunks (issue 15): a task its kind lets the coordinator cut (a render range
planned without a chunk size: ``Kind.work_units``) is cut as a worker leases it, so the
worker keeps as many units as it should get (``chunk_sizes.units_for``, from what the
job's finished chunks say of this worker and the others) and the rest stays queued as a
new task of the job (``Kind.split``; ``store.queries.chunking.insert_rest``).

Called by the claim inside the exchange's transaction, on the ready rows it claimed
(locked), before they are leased, so the worker only ever sees its part: the task's
payload and name are the head's when its attempt starts. The job's row is locked while
a task of it is cut (the rest is numbered after the job's last task). A worker that
vanishes holding a chunk loses that chunk only: the reaper requeues it as it is, and the
next worker to take it cuts it again to its own size."""

from __future__ import annotations

import logging
import types
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.coordinator.services import leasing
from parallel_pilot.coordinator.services.chunk_sizes import (
    FinishedChunk,
    Running,
    Speeds,
    estimate,
    units_for,
)
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import TaskPart, split_task, work_units
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import chunking as qc

log = logging.getLogger("pilot.chunking")

HISTORY_CHUNKS = 200  # a job's latest finished chunks its speeds are learned from


def choose(conn: sa.Connection, svc: Services, worker_id: int, candidates: Sequence[Any],
           want: int) -> list[Any]:
    """The ``want`` candidates (claimed ready rows, locked to this transaction) to lease
    to ``worker_id`` (``leasing.prefer_affinity``), each task that may be cut cut to what
    this worker should get: the row returned for it carries the head's name and payload."""
    return cut(conn, svc, worker_id,
               leasing.prefer_affinity(conn, worker_id, list(candidates), want))


def cut(conn: sa.Connection, svc: Services, worker_id: int, chosen: list[Any]) -> list[Any]:
    """``chosen`` (rows to lease to ``worker_id``), each that may be cut cut to its size."""
    if not chosen:
        return chosen
    view = _Views(conn, svc, worker_id)
    return [view.cut(r) for r in chosen]


class _Views:
    """What each job's finished and open tasks say, read once per job for one claim."""

    def __init__(self, conn: sa.Connection, svc: Services, worker_id: int) -> None:
        self.conn, self.svc, self.worker_id = conn, svc, worker_id
        self._jobs: dict[int, tuple[Speeds, int, list[Running]]] = {}

    def units(self, row: Any, units: int) -> int:
        """Units of its ``units`` the worker should keep of the row's task."""
        if row.job_id not in self._jobs:
            self._jobs[row.job_id] = self._read(row.job_id, row.kind)
        speeds, unleased, running = self._jobs[row.job_id]
        return units_for(self.worker_id, available=units, speeds=speeds,
                         target_seconds=self.svc.settings.chunk_seconds, unleased=unleased,
                         running=running)

    def _read(self, job_id: int, kind_name: str) -> tuple[Speeds, int, list[Running]]:
        kind = get_kind(kind_name)
        finished = [FinishedChunk(r.worker_id, work_units(kind, r.payload),
                                  float(r.finished_at) - float(r.leased_at))
                    for r in qc.finished_chunks(self.conn, job_id, kind_name, HISTORY_CHUNKS)]
        unleased, running = 0, []
        now = self.svc.clock()
        for r in qc.open_chunks(self.conn, job_id, kind_name):
            if r.state == TaskState.READY:
                unleased += work_units(kind, r.payload)
            elif r.worker_id is not None and r.worker_id != self.worker_id:
                running.append(Running(int(r.worker_id), work_units(kind, r.payload),
                                       now - float(r.leased_at or now)))
        return estimate(finished), unleased, running

    def cut(self, row: Any) -> Any:
        kind = get_kind(row.kind)
        units = work_units(kind, row.payload)
        parts = split_task(kind, row.payload, self.units(row, units)) if units > 1 else None
        if parts is None or not _cut(self.conn, self.svc, row, parts):
            return row
        head, _ = parts
        return types.SimpleNamespace(**{**row._asdict(), "name": head.name,
                                        "payload": head.payload})


def _cut(conn: sa.Connection, svc: Services, row: Any, parts: tuple[TaskPart, TaskPart]) -> bool:
    """Cut the claimed ready task: it keeps the head, the rest is a new ready task. False
    (nothing changed) when the job may have no more tasks or the task feeds a quorum."""
    job = qc.lock_job(conn, row.job_id)
    if job is None or JobState(job.state).finished \
            or job.tasks_total >= svc.settings.max_tasks_per_job \
            or qc.has_quorum_dependents(conn, row.id):
        return False
    source = q.get_task(conn, row.id)
    head, rest = parts
    if source is None or not qc.set_claimed_part(conn, row.id, row.attempt, head.name,
                                                 head.payload):
        return False
    qc.insert_rest(conn, source, rest.name, rest.payload)
    # waiting polls claim in their own transactions once woken, after this one commits
    # as a rule; one that runs first finds nothing and claims again within a recheck
    svc.notifier.tasks_ready({row.kind: 1})
    log.debug("task %d of job %d cut: %s kept, %s queued", row.id, row.job_id, head.name,
              rest.name)
    return True
