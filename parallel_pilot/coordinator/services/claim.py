"""Claiming: which ready tasks a worker gets, inside the exchange's transaction (or the
older ``POST /workers/lease``), within what it may hold (``trust``).

Claims pick fitting tasks in SQL: each distinct requirement set is a row with its
requirements as columns, the sets a worker meets are matched in SQL against its
capabilities once per set (``FitCache``, ``store.queries.matching``), and the claim reads
one index range per (kind, set). A worker whose claim finds nothing may get a backup copy
of a straggler instead (``services.stragglers``, which also handles the reports, renewals
and stops of copies).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from parallel_pilot.coordinator.services import chunking, leasing, stragglers, trust
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.payloads import task_payloads
from parallel_pilot.core.protocol import Capabilities, TaskLease
from parallel_pilot.core.requirements import MAX_GPU_COUNT
from parallel_pilot.core.states import JobState
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import copies as qc
from parallel_pilot.store.queries import matching as qm
from parallel_pilot.store.queries import sync as qs
from parallel_pilot.store.queries import workers as qw

CLAIM_SPARE = 8  # candidates read beyond those wanted, for affinity to choose among
SETS_RECHECK_SECONDS = 2.0  # how stale this process's list of requirement sets may be
FIT_CACHE_WORKERS = 10_000  # distinct worker capabilities whose fitting sets are kept
GPU_NEEDS_KEPT = 100_000  # requirement sets whose GPU need this process remembers


@dataclass
class _Fit:
    max_set: int = 0  # sets up to this id were checked
    fitting: list[int] = field(default_factory=lambda: [qs.NO_REQUIREMENTS])


class FitCache:
    """The sets a worker meets, per database and per what of a worker the match reads
    (``matching.worker_terms``: workers alike share an entry; a worker whose capabilities
    or trust change gets another). Sets never change once written, so only sets added
    since are matched again, in SQL (``matching.fitting_set_ids``)."""

    def __init__(self) -> None:
        self._max_set = 0
        self._checked = -1e9
        self._added = -1
        self._fits: dict[tuple[Any, ...], _Fit] = {}
        self._gpus: dict[int, int] = {}  # set id -> GPUs its tasks hold (sets never change)
        self._lock = threading.Lock()

    def gpus_held(self, conn: sa.Connection, set_ids: Sequence[int]) -> dict[int, int]:
        """set id -> the GPUs a task of it holds while it runs, for ``set_ids``."""
        wanted = {s for s in set_ids if s != qs.NO_REQUIREMENTS}
        with self._lock:
            missing = [s for s in wanted if s not in self._gpus]
            if missing:
                if len(self._gpus) >= GPU_NEEDS_KEPT:
                    self._gpus.clear()
                found = qm.set_gpus_held(conn, missing)
                self._gpus.update((s, found.get(s, 0)) for s in missing)
            return {s: self._gpus.get(s, 0) for s in wanted}

    def fitting_sets(self, conn: sa.Connection, worker: sa.Row, caps: Capabilities,
                     fresh: bool = False, trusted: bool = False) -> list[int]:
        terms = qm.worker_terms(caps, trusted)
        with self._lock:
            added = qs.sets_added()
            if fresh or added != self._added or \
                    time.monotonic() - self._checked > SETS_RECHECK_SECONDS:
                self._added = added
                self._max_set = max(self._max_set, qm.max_set_id(conn))
                self._checked = time.monotonic()
            if len(self._fits) >= FIT_CACHE_WORKERS:
                self._fits.clear()
            fit = self._fits.setdefault(terms, _Fit())
            if fit.max_set < self._max_set:
                fit.fitting.extend(qm.fitting_set_ids(conn, terms, after=fit.max_set,
                                                      upto=self._max_set))
                fit.max_set = self._max_set
            return list(fit.fitting)


_fit_caches: weakref.WeakKeyDictionary[sa.Engine, FitCache] = weakref.WeakKeyDictionary()
_fit_lock = threading.Lock()


def fit_cache(svc: Services) -> FitCache:
    with _fit_lock:
        cache = _fit_caches.get(svc.engine)
        if cache is None:
            cache = _fit_caches[svc.engine] = FitCache()
        return cache


def capabilities(worker: sa.Row) -> Capabilities:
    return Capabilities.model_validate(worker.capabilities)


def claim_in(conn: sa.Connection, svc: Services, worker: sa.Row, caps: Capabilities,
             want: int, now: float, fresh_sets: bool = False, *, prefetch: int,
             me: sa.Row | None = None, held: Sequence[sa.Row] | None = None,
             free_gpus: int | None = None, backups: bool = False) -> list[TaskLease]:
    """Lease to the worker inside ``conn`` up to ``want`` fitting ready tasks that need no
    GPU, never more such than its allowed slots plus ``prefetch`` held in all, and tasks
    that need GPUs as long as their GPUs fit in its GPU slots that no held attempt holds
    (``trust``; ``free_gpus``, the worker's word, can only lower that). ``me`` is the
    worker's row locked by this transaction and ``held`` the attempts it holds, backup
    copies included (read here when not given); a pending or paused worker gets nothing.
    With ``backups``, a worker that finds no task may get backup copies of stragglers on
    its free slots (``stragglers``)."""
    if me is None:
        me = qw.lock_worker(conn, worker.id)
    if me is None or me.pending or (me.paused_until is not None and me.paused_until > now):
        return []
    cache = fit_cache(svc)
    if held is None:
        held = [*qs.held_attempts(conn, worker.id, lock=False),
                *qc.held_copies(conn, worker.id, lock=False)]
    holds = cache.gpus_held(conn, [r.requirement_set_id for r in held])
    held_gpus = sum(holds.get(r.requirement_set_id, 0) for r in held)
    held_cpu = sum(1 for r in held if not holds.get(r.requirement_set_id, 0))
    slots = trust.slots_now(svc, me, caps.slots)
    want = min(want, slots + prefetch - held_cpu)
    gpu_room = trust.gpu_slots_now(svc, me, min(len(caps.gpus), MAX_GPU_COUNT)) - held_gpus
    if free_gpus is not None:
        gpu_room = min(gpu_room, free_gpus)
    if (want <= 0 and gpu_room <= 0) or not caps.kinds:
        return []
    sets = cache.fitting_sets(conn, worker, caps, fresh=fresh_sets, trusted=bool(me.trusted))
    gpus_of = cache.gpus_held(conn, sets)
    chosen: list[sa.Row] = []
    cpu_sets = [s for s in sets if not gpus_of.get(s, 0)]
    if want > 0 and cpu_sets:
        rows = _candidates(conn, svc, worker, me, caps, cpu_sets, want + CLAIM_SPARE)
        chosen += chunking.choose(conn, svc, worker.id, rows, want)  # adaptive chunks cut
    gpu_sets = [s for s in sets if 0 < gpus_of.get(s, 0) <= gpu_room]
    if gpu_sets:
        rows = _candidates(conn, svc, worker, me, caps, gpu_sets, gpu_room + CLAIM_SPARE)
        fit = []
        for row in leasing.prefer_affinity(conn, worker.id, rows, len(rows)):
            if gpus_of[row.requirement_set_id] <= gpu_room:  # the first that fit, in order
                fit.append(row)
                gpu_room -= gpus_of[row.requirement_set_id]
        chosen += chunking.cut(conn, svc, worker.id, fit)
    if not chosen:
        if not backups:
            return []
        # copies of CPU tasks on free CPU slots; of a GPU task, one at a time on free GPUs
        return [*stragglers.backups(conn, svc, worker, me, caps, cpu_sets,
                                    min(want, slots - held_cpu), now),
                *stragglers.backups(conn, svc, worker, me, caps, gpu_sets,
                                    1 if gpu_room > 0 else 0, now)]
    expires = now + svc.settings.lease_seconds
    changed = qs.lease_claimed(conn, [r.id for r in chosen], worker_id=worker.id, now=now,
                               expires_at=expires)
    if changed != len(chosen):  # cannot happen under the claim's locks; never lease blind
        raise RuntimeError(f"claimed {len(chosen)} tasks but leased {changed}")
    q.mark_job_running(conn, (r.job_id for r in chosen if r.job_state == JobState.QUEUED), now)
    beat = svc.settings.heartbeat_seconds
    payloads = task_payloads(conn, chosen)  # the task's item under what its job shares
    return [TaskLease(task_id=r.id, attempt=qs.next_attempt_of(r), job_id=r.job_id, kind=r.kind,
                      name=r.name, payload=payload, inputs=r.inputs,
                      lease_expires_at=expires, heartbeat_seconds=beat,
                      gpus=gpus_of.get(r.requirement_set_id, 0))
            for r, payload in zip(chosen, payloads, strict=True)]


def _candidates(conn: sa.Connection, svc: Services, worker: sa.Row, me: sa.Row,
                caps: Capabilities, sets: Sequence[int], limit: int) -> list[sa.Row]:
    """Ready tasks of these sets the worker may take, in claim order, those it failed
    before last (``trust.offer_elsewhere_first``)."""
    rows = qs.claim_candidates(conn, worker_id=worker.id, kinds=caps.kinds, sets=sets,
                               block_threshold=svc.settings.worker_block_failures,
                               limit=limit, lock=svc.lock_claims,
                               join_token_id=trust.token_of(me),
                               token_threshold=svc.settings.join_token_block_failures)
    return trust.offer_elsewhere_first(conn, worker.id, rows)


def claim(svc: Services, worker: sa.Row, slots: int) -> list[TaskLease]:
    """``POST /workers/lease``: up to ``slots`` fitting ready tasks (within what the worker
    may hold); empty if none (or the worker has left: a poll still open after it left
    gets nothing)."""
    now = svc.clock()
    with svc.transaction() as conn:
        if not q.touch_worker(conn, worker.id, now):
            return []
        return claim_in(conn, svc, worker, capabilities(worker), slots, now,
                        prefetch=svc.settings.max_prefetch)


