"""The worker exchange (``POST /workers/sync``): one transaction applies a worker's reports
(results, failures, hand-backs, progress), reconciles what it says it holds with what it
was leased, renews every lease it holds with one expiry, and grants new leases up to its
slots plus the prefetch the coordinator allows, and tasks that need GPUs up to its free
GPUs. Reports are fenced by (task, attempt, worker, leased), so a resent sync applies
nothing twice.

GPU slots: a task holds ``gpus_held`` GPUs of its worker while it runs (its requirement
set's, ``core.requirements.gpus_held_by``). The coordinator counts what a worker's held
attempts hold itself, from their sets, and leases GPU tasks only into GPUs no held
attempt holds (of its GPU slots: the GPUs it claimed, capped); never as prefetch, so a
worker never holds a GPU task it could not start at once. CPU slots and the prefetch are
for the tasks that need no GPU. A worker's own ``free_gpus`` can only lower this.

Leases are granted by ``services.claim``."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import sqlalchemy as sa

from parallel_pilot.coordinator.services import (
    blobs,
    jobs,
    leasing,
    losses,
    quorum,
    stragglers,
    trust,
)
from parallel_pilot.coordinator.services.claim import capabilities, claim_in
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.core.protocol import (
    AttemptReport,
    AttemptStop,
    ReportVerdict,
    SyncRequest,
    SyncResponse,
    TaskLease,
)
from parallel_pilot.core.states import TaskState
from parallel_pilot.errors import OutputNotUploaded, Unauthorized
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import clean_result
from parallel_pilot.store import queries as q
from parallel_pilot.store.database import is_deadlock
from parallel_pilot.store.queries import sync as qs
from parallel_pilot.store.queries import workers as qw

log = logging.getLogger("pilot.sync")

EXCHANGE_TRIES = 8  # times one sync runs when the database aborts it to break a deadlock
DEADLOCK_PAUSE_SECONDS = 0.02  # at most this times the try before the next (random: apart)
@dataclass
class Exchange:
    """What one sync did: the answer, and what the caller must do after the commit."""

    response: SyncResponse
    ready: Counter[str] = field(default_factory=Counter)  # tasks made ready, per kind
    changed_unknown: bool = False  # tasks may have become ready through a quorum
    live: bool = True  # the worker may still be given tasks
    held: int = 0  # attempts the worker holds after this sync
    # (kind, outcome, seconds from lease to report) of the attempts reported, for metrics
    finished: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        r = self.response
        return not (r.tasks or r.verdicts or r.stop)


def exchange(svc: Services, worker: sa.Row, request: SyncRequest) -> Exchange:
    """Apply one sync request in one transaction (see the module docstring), run again
    from the start when the database broke a deadlock by aborting it: two syncs that
    finish and claim tasks of several jobs each lock those jobs' rows (their task counts)
    in different orders, and a fair claim spreads a worker over several users' jobs."""
    out = _retried(lambda: _exchange_once(svc, worker, request), worker.id)
    svc.metrics.tasks_finished(out.finished)  # committed
    return out


T = TypeVar("T")


def _retried(once: Callable[[], T], worker_id: int) -> T:
    """``once()``, run again (up to ``EXCHANGE_TRIES`` in all) when it deadlocked."""
    for attempt in range(1, EXCHANGE_TRIES + 1):
        try:
            return once()
        except sa.exc.DBAPIError as error:
            if attempt == EXCHANGE_TRIES or not is_deadlock(error):
                raise
            log.info("sync of worker %s deadlocked (try %d); running it again", worker_id,
                     attempt)
            # syncs that deadlocked together would meet again if they ran again at once
            time.sleep(random.uniform(0, DEADLOCK_PAUSE_SECONDS * attempt))
    raise AssertionError("unreachable")


def _exchange_once(svc: Services, worker: sa.Row, request: SyncRequest) -> Exchange:
    now = svc.clock()
    expires = now + svc.settings.lease_seconds
    caps = capabilities(worker)
    out = Exchange(SyncResponse(lease_expires_at=expires,
                                sync_seconds=svc.settings.heartbeat_seconds,
                                lease_seconds=svc.settings.lease_seconds))
    with svc.transaction() as conn:
        me = qw.lock_worker(conn, worker.id)  # first: one sync of a worker at a time
        held = {r.id: r for r in qs.held_attempts(conn, worker.id, lock=svc.lock_claims)}
        copies = stragglers.held(conn, svc, worker.id, request, held)
        theirs = stragglers.apply_reports(conn, svc, worker, request.reports, held, copies,
                                          now)
        _store_logs(conn, svc, theirs.logs, now)
        settled = _apply_reports(conn, svc, worker, theirs.rest, held, out, now)
        out.response.verdicts = stragglers.in_order(request.reports, theirs.rest,
                                                    out.response.verdicts, theirs.verdicts)
        if any(r.outcome == "failed" for r in request.reports):
            me = qw.lock_worker(conn, worker.id)  # its failures may have paused it
        finished = sum(v.accepted for v, r in zip(out.response.verdicts, request.reports,
                                                  strict=True) if r.outcome == "completed")
        out.live = qs.touch_live_worker(conn, worker.id, now, finished)
        if not out.live:
            _check_not_revoked(conn, svc, worker)  # a revoked worker's sync is refused
            qs.add_worker_done(conn, worker.id, finished)
        still = {i: r for i, r in held.items() if i not in settled}
        listed = {ref.task_id: ref.attempt for ref in request.held}
        listed.update((r.task_id, r.attempt) for r in request.reports
                      if r.outcome == "running")
        lost = [r for i, r in still.items() if listed.get(i) != r.attempt]
        if request.leaving:
            lost = list(still.values())
        line = ("worker {name} is leaving; task handed back (no attempt used)"
                if request.leaving else
                "attempt {attempt} never reached worker {name} (an answer lost on the "
                "way); task requeued (no attempt used)")
        out.ready.update(losses.lose(conn, svc, lost, [
            line.format(name=worker.name, attempt=r.attempt) for r in lost], now))
        out.changed_unknown |= bool(lost)  # a task lost too often may have failed its job
        for i in [r.id for r in lost]:
            del still[i]
        kept = stragglers.reconcile(conn, worker, copies, settled | theirs.settled, listed,
                                    request.leaving, now)
        out.response.stop = _stops(conn, listed, {**still, **kept}, settled | theirs.settled)
        stragglers.stopped(conn, worker.id, out.response.stop, out.response.verdicts, kept,
                           now)
        if still:
            qs.renew_leases(conn, worker.id, expires)
        stragglers.renew(conn, worker.id, kept, expires)
        out.held = len(still) + len(kept)
        if request.leaving:
            q.mark_worker_left(conn, worker.id, now)
            out.live = False
        elif out.live:
            granted = min(request.prefetch, svc.settings.max_prefetch)
            want = request.free_slots + request.prefetch
            out.response.prefetch_granted = granted
            out.response.tasks = claim_in(conn, svc, worker, caps, want, now,
                                          prefetch=granted, me=me,
                                          held=[*still.values(), *kept.values()],
                                          free_gpus=request.free_gpus, backups=True)
            out.held += len(out.response.tasks)
    if request.leaving:
        svc.worker_cache.forget(worker.id)
        log.info("worker %s (%d) left; %d task(s) handed back", worker.name, worker.id,
                 len(lost))
    return out


def poll(svc: Services, worker: sa.Row, request: SyncRequest,
         ) -> tuple[list[TaskLease], bool]:
    """A long poll woke up: claim what the worker may take now; (leases, whether the
    worker may still get tasks). Run again when it deadlocked, as ``exchange``."""
    return _retried(lambda: _poll_once(svc, worker, request), worker.id)


def _poll_once(svc: Services, worker: sa.Row, request: SyncRequest,
               ) -> tuple[list[TaskLease], bool]:
    now = svc.clock()
    caps = capabilities(worker)
    granted = min(request.prefetch, svc.settings.max_prefetch)
    want = request.free_slots + request.prefetch
    with svc.transaction() as conn:
        if not qs.touch_live_worker(conn, worker.id, now):
            return [], False
        # what it holds is counted again under its lock: another sync may have run
        return claim_in(conn, svc, worker, caps, want, now, fresh_sets=True,
                        prefetch=granted, free_gpus=request.free_gpus, backups=True), True


def _check_not_revoked(conn: sa.Connection, svc: Services, worker: sa.Row) -> None:
    row = q.get_worker(conn, worker.id)
    if row is None or row.revoked_at is not None:
        svc.worker_cache.forget(worker.id)
        raise Unauthorized("the worker token is not valid (revoked or mistyped)")


def _apply_reports(conn: sa.Connection, svc: Services, worker: sa.Row,
                   reports: Sequence[AttemptReport], held: dict[int, sa.Row], out: Exchange,
                   now: float) -> set[int]:
    """Apply the reports of attempts the worker holds; a verdict for each. Returns the ids
    of the tasks that left the worker (done, failed, released)."""
    verdicts: dict[int, ReportVerdict] = {}
    accepted: dict[str, list[tuple[AttemptReport, sa.Row]]] = {
        "completed": [], "failed": [], "released": [], "running": []}
    refused: list[AttemptReport] = []
    seen: set[tuple[int, int]] = set()
    for report in reports:
        key = (report.task_id, report.attempt)
        row = held.get(report.task_id)
        if key in seen or row is None or row.attempt != report.attempt:
            refused.append(report)
        else:
            accepted[report.outcome].append((report, row))
        seen.add(key)
    granted, untrue = _granted_outputs(conn, worker, accepted["completed"])
    _store_logs(conn, svc, [(row, r.attempt, r.log_lines) for kind in accepted.values()
                            for r, row in kind if r.log_lines], now)
    settled = _complete(conn, svc, worker, accepted["completed"], granted, out, now)
    for report, row, reason in untrue:  # refused whole; the task goes to another worker
        q.record_worker_failure(conn, worker.id, row.job_id)
        verdicts[id(report)] = ReportVerdict(task_id=report.task_id, attempt=report.attempt,
                                             accepted=False, reason=reason)
    _hand_back(conn, worker, [row for _, row, _ in untrue], out,
               "attempt {attempt} on worker {name} reported an output it did not upload "
               "for it; the report was refused and the task requeued", now)
    settled |= {row.id for _, row, _ in untrue}
    settled |= _fail(conn, svc, worker, accepted["failed"], out)
    released = [row for _, row in accepted["released"]]
    _hand_back(conn, worker, released, out, "handed back by worker {name}", now)
    settled |= {row.id for row in released}
    qs.set_attempt_progress(conn, worker.id, [
        (r.task_id, r.attempt, r.progress, r.message) for r, _ in accepted["running"]
        if r.progress is not None or r.message is not None])
    for kind in accepted.values():
        for report, _ in kind:
            verdicts[id(report)] = ReportVerdict(task_id=report.task_id,
                                                 attempt=report.attempt, accepted=True)
    if refused:
        states = qs.attempt_states(conn, [r.task_id for r in refused])
        dup: set[tuple[int, int]] = set()
        for report in refused:
            key = (report.task_id, report.attempt)
            reason = ("reported twice in one sync" if key in dup or key in
                      {(r.task_id, r.attempt) for r, _ in
                       (x for k in accepted.values() for x in k)}
                      else _not_yours(states.get(report.task_id), report.attempt))
            dup.add(key)
            verdicts[id(report)] = ReportVerdict(task_id=report.task_id,
                                                 attempt=report.attempt, accepted=False,
                                                 reason=reason)
    out.response.verdicts = [verdicts[id(r)] for r in reports]
    return settled


def _not_yours(state: sa.Row | None, attempt: int) -> str:
    if state is None:
        return "no such task"
    if state.attempt != attempt:
        return (f"attempt {attempt} is not the current one (the task is {state.state}, "
                f"attempt {state.attempt})")
    if state.state == TaskState.READY:
        return f"attempt {attempt} lost its lease; the task is queued again"
    if state.state == TaskState.CANCELLED:
        return "the task was cancelled"
    if state.state == TaskState.LEASED:
        return "the task is not held by this worker"
    return f"the task is {state.state} already"


def _granted_outputs(conn: sa.Connection, worker: sa.Row,
                     done: list[tuple[AttemptReport, sa.Row]],
                     ) -> tuple[dict[int, list[blobs.GrantedOutput]],
                                list[tuple[AttemptReport, sa.Row, str]]]:
    """The outputs of completed reports (``services.blobs.granted_outputs``); a report
    naming one this worker did not upload for the attempt leaves ``done`` (it is refused
    whole) and is returned with the reason."""
    granted: dict[int, list[blobs.GrantedOutput]] = {}
    untrue: list[tuple[AttemptReport, sa.Row, str]] = []
    kept: list[tuple[AttemptReport, sa.Row]] = []
    for report, row in done:
        try:
            if report.outputs:
                granted[id(report)] = blobs.granted_outputs(conn, worker.id, row.id,
                                                            report.attempt, report.outputs,
                                                            kind=row.kind)
        except OutputNotUploaded as exc:
            untrue.append((report, row, exc.message))
        else:
            kept.append((report, row))
    done[:] = kept
    return granted, untrue


def _complete(conn: sa.Connection, svc: Services, worker: sa.Row,
              done: list[tuple[AttemptReport, sa.Row]],
              granted: dict[int, list[blobs.GrantedOutput]], out: Exchange,
              now: float) -> set[int]:
    if not done:
        return set()
    for report, row in done:
        blobs.add_outputs(conn, row.job_id, row.id, report.attempt,
                          granted.get(id(report), []), now)
    qs.complete_attempts(conn, worker.id, [
        (r.task_id, r.attempt, clean_result(get_kind(row.kind), r.result or {}))
        for r, row in done], now)
    out.finished += _timed(done, "completed", now)
    maybe_complete = qs.add_jobs_done(conn, Counter(row.job_id for _, row in done))
    pairs = qs.dependents_of(conn, [row.id for _, row in done])
    if pairs:
        ready = qs.unblock(conn, Counter(t for t, _ in pairs))
        out.ready.update(ready)
        for dependency in sorted({d for _, d in pairs}):  # quorum dependents (training)
            quorum.after_dependency_done(conn, svc, dependency)
        out.changed_unknown |= not ready  # a quorum may have let a dependent go ahead
    for job_id in maybe_complete:
        jobs.finish_if_complete(conn, svc, job_id)
    return {row.id for _, row in done}


def _timed(reported: list[tuple[AttemptReport, sa.Row]], outcome: str,
           now: float) -> list[tuple[str, str, float]]:
    """(kind, outcome, seconds from the lease) of the attempts whose rows say when they
    were leased (a backup copy's do not: it is left out)."""
    out = []
    for _, row in reported:
        leased = row._mapping.get("leased_at")
        if leased is not None:
            out.append((row.kind, outcome, now - float(leased)))
    return out


def _fail(conn: sa.Connection, svc: Services, worker: sa.Row,
          failed: list[tuple[AttemptReport, sa.Row]], out: Exchange) -> set[int]:
    """Failed attempts: requeued (counting a failure) in one statement while attempts
    remain and a retry can help (or handed to a live backup copy); else the task fails
    and with it, maybe, the job."""
    again: list[tuple[sa.Row, str]] = []
    final: list[tuple[sa.Row, str, bool, trust.Weighed]] = []
    now = svc.clock()
    out.finished += _timed(failed, "failed", now)
    for report, row in failed:
        weighed = trust.weigh_failure(conn, svc, worker, row, report.retryable, now,
                                      report.reason)
        reason = (f"{report.reason or 'failed'} (attempt {report.attempt} on worker "
                  f"{worker.name}{trust.doubt_note(report.retryable, weighed.retry)})")
        if weighed.retry:
            again.append((row, reason))
        else:
            final.append((row, reason, report.retryable, weighed))
    carried = stragglers.carry_on(conn, [(r, reason) for r, reason in again], now, failed=1)
    qs.requeue_failed_attempts(conn, worker.id, [(r.id, r.attempt, reason)
                                                 for r, reason in again if r.id not in carried])
    out.ready.update(r.kind for r, _ in again if r.id not in carried)
    for row, reason, retryable, weighed in final:
        leasing._requeue_or_fail(conn, svc, row, reason, retry=retryable,
                                 fast=trust.repeat_note(weighed) if weighed.repeated
                                 else None)
        out.changed_unknown = True
    return {row.id for _, row in failed}


def _hand_back(conn: sa.Connection, worker: sa.Row, rows: Sequence[sa.Row], out: Exchange,
               line: str, now: float) -> None:
    """Held attempts back to the queue, no failure counted, a log line each (or to a live
    backup copy of theirs)."""
    carried = stragglers.carry_on(conn, [
        (r, line.format(name=worker.name, attempt=r.attempt)) for r in rows], now)
    rows = [r for r in rows if r.id not in carried]
    if not rows:
        return
    qs.hand_back(conn, worker.id, [r.id for r in rows])
    qs.insert_logs(conn, [(r.job_id, r.id, r.attempt,
                           line.format(name=worker.name, attempt=r.attempt)) for r in rows],
                   now)
    out.ready.update(r.kind for r in rows)


def _stops(conn: sa.Connection, listed: dict[int, int], still: dict[int, sa.Row],
           settled: set[int]) -> list[AttemptStop]:
    """Attempts the worker lists as held that are not its any more."""
    gone = {t: a for t, a in listed.items()
            if t not in settled and (t not in still or still[t].attempt != a)}
    if not gone:
        return []
    states = qs.attempt_states(conn, list(gone))
    return [AttemptStop(task_id=t, attempt=a, reason=_not_yours(states.get(t), a))
            for t, a in sorted(gone.items())]


def _store_logs(conn: sa.Connection, svc: Services,
                items: list[tuple[sa.Row, int, list[str]]], now: float) -> None:
    """Log lines of many attempts, each task up to its log limit (``leasing._store_log``'s
    rule: past the limit lines are dropped and one marker line says so)."""
    if not items:
        return
    limit = svc.settings.max_log_bytes_per_task
    marker = leasing.LOG_TRUNCATED.format(limit=limit)
    used = qs.log_chars(conn, [row.id for row, _, _ in items])
    near = [t for t, n in used.items() if n + leasing.MAX_LOG_LINE_CHARS > limit]
    closed = qs.tasks_with_line(conn, near, marker) if near else set()
    rows: list[tuple[int, int, int, str]] = []
    for task, attempt, lines in items:
        if task.id in closed:
            continue
        for line in leasing._clean_lines(lines):
            if used[task.id] + len(line) > limit:
                rows.append((task.job_id, task.id, attempt, marker))
                closed.add(task.id)
                break
            used[task.id] += len(line)
            rows.append((task.job_id, task.id, attempt, line))
    qs.insert_logs(conn, rows, now)
