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
from collections import defaultdict
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
from parallel_pilot.kinds.base import TaskPart, output_unit, split_task, unit_keys, work_units
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import chunking as qc

log = logging.getLogger("pilot.chunking")

HISTORY_CHUNKS = 200  # a job's latest finished chunks its speeds are learned from


def choose(conn: sa.Connection, svc: Services, worker_id: int, candidates: Sequence[Any],
           want: int) -> list[Any]:
    """The ``want`` candidates (claimed ready rows, locked to this transaction) to lease
    to ``worker_id`` (``leasing.prefer_affinity``), each task that may be cut cut to what
    this worker should get: the row returned for it carries the head's name and payload."""
    ordered = leasing.prefer_affinity(conn, worker_id, list(candidates), len(candidates))
    return cut(conn, svc, worker_id, ordered, want)


def cut(conn: sa.Connection, svc: Services, worker_id: int, chosen: list[Any],
        want: int | None = None) -> list[Any]:
    """Up to ``want`` (all) of ``chosen`` (rows to lease to ``worker_id``, in order), each
    that may be cut cut to its size; a task of a job whose units left other workers will
    finish sooner is passed over (``chunk_sizes.units_for`` gives it none)."""
    if not chosen:
        return chosen
    view = _Views(conn, svc, worker_id)
    out: list[Any] = []
    for row in chosen:
        if want is not None and len(out) >= want:
            break
        kept = view.cut(row)
        if kept is not None:
            out.append(kept)
    return out


class _Views:
    """What each job's finished and open tasks say, read once per job for one claim."""

    def __init__(self, conn: sa.Connection, svc: Services, worker_id: int) -> None:
        self.conn, self.svc, self.worker_id = conn, svc, worker_id
        self._jobs: dict[int, tuple[Speeds, dict[int, list[float]], list[Running]]] = {}
        self._passed: set[int] = set()  # jobs whose units others will finish sooner

    def units(self, row: Any, units: int) -> int:
        """Units of its ``units`` the worker should keep of the row's task (0: none)."""
        if row.job_id in self._passed:
            return 0
        if row.job_id not in self._jobs:
            self._jobs[row.job_id] = self._read(row.job_id, row.kind)
        speeds, unleased, running = self._jobs[row.job_id]
        mine = unleased.get(int(row.id)) or [1.0] * units
        others = [c for task, costs in unleased.items() if task != row.id for c in costs]
        kept = units_for(self.worker_id, available=units, speeds=speeds,
                         target_seconds=self.svc.settings.chunk_seconds, running=running,
                         costs=mine, others=others)
        if kept <= 0:
            self._passed.add(row.job_id)
        return kept

    def _read(self, job_id: int, kind_name: str,
              ) -> tuple[Speeds, dict[int, list[float]], list[Running]]:
        kind = get_kind(kind_name)
        arrived: dict[int, dict[int, float]] = defaultdict(dict)  # task -> unit -> when
        for r in qc.attempt_outputs(self.conn, job_id, kind_name):
            unit = output_unit(kind, r.path)
            if unit is not None:
                arrived[int(r.task_id)][unit] = float(r.created_at)
        finished = []
        for r in qc.finished_chunks(self.conn, job_id, kind_name, HISTORY_CHUNKS):
            units, keys = work_units(kind, r.payload), unit_keys(kind, r.payload) or []
            keys = keys if len(keys) == units else []
            leased, seen = float(r.leased_at), arrived.get(int(r.id), {})
            marks = tuple(seen[k] - leased for k in keys) \
                if keys and all(k in seen for k in keys) else ()
            finished.append(FinishedChunk(int(r.worker_id), units,
                                          float(r.finished_at) - leased, tuple(keys), marks))
        speeds = estimate(finished)
        unleased: dict[int, list[float]] = {}  # ready task -> its units' costs, in order
        running = []
        now = self.svc.clock()
        for r in qc.open_chunks(self.conn, job_id, kind_name):
            units, named = work_units(kind, r.payload), unit_keys(kind, r.payload)
            keys = named if named is not None and len(named) == units else []
            cost = speeds.cost.total(keys) if keys else float(units)
            if r.state == TaskState.READY:
                unleased[int(r.id)] = [speeds.cost(k) for k in keys] if keys \
                    else [1.0] * units
            elif r.worker_id is not None and r.worker_id != self.worker_id:
                seen = arrived.get(int(r.id), {})
                done = [k for k in keys if k in seen]
                running.append(Running(
                    int(r.worker_id), units, now - float(r.leased_at or now), cost,
                    left=cost - speeds.cost.total(done) if done else None,
                    quiet=now - max(seen[k] for k in done) if done else 0.0))
        return speeds, unleased, running

    def cut(self, row: Any) -> Any | None:
        """The row as leased (cut to its head where it should be), or None: it is not
        this worker's to take."""
        kind = get_kind(row.kind)
        units = work_units(kind, row.payload)
        if units <= 0:
            return row
        keep = self.units(row, units)
        if keep <= 0:
            return None
        parts = split_task(kind, row.payload, keep) if units > 1 else None
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
