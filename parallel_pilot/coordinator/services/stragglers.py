"""Backup copies of stragglers (issue 15): when a job's remaining tasks are all running
and a worker sits idle, a copy of the attempt furthest behind goes to that worker; the
first valid result wins and the other attempt is told to stop.

The rules (docs/architecture.md, "Stragglers: backup copies"):

* **When.** Only for a worker whose claim found nothing it could take (no ready task of
  any job fits it), with a free slot (never as prefetch), for a task of a *running job
  with no ready task left* (its tail). The task must fit the worker as any claim does
  (kinds, requirement sets, jobs it or its join token is blocked from).
* **Which.** An attempt that ran at least ``backup_min_seconds`` and is behind (``behind``):
  *slow*, its expected time left is ``backup_factor`` times what a copy on this worker
  would take (this worker's median time on the job's finished tasks, else the job's
  median); or *late*, it ran ``backup_factor`` times what it should take (its worker's
  median on the job, else the job's; with no task of the job finished yet,
  ``backup_after_seconds``). Time left comes from the pace the coordinator measured for
  the original's worker on the job, else from the progress the worker reports (a claim:
  lying can only delay a backup until the attempt is late).
  Furthest behind first; among users, the one with the fewest tasks running first.
* **How many.** At most one open copy per attempt, never on the worker running the
  original nor on one that had a copy of the task before.
* **Who wins.** The copy is an attempt of its own (``queries.copies``). When it
  completes first it takes the task's place (its attempt, worker and lease) and the task
  completes once, through the same path as any result, its outputs those of the copy;
  the original's worker is told to stop at its next exchange, and a late report of the
  original is refused as not current (no failure). When the original completes first the
  copy is no longer live: its worker is told to stop, its report is refused.
* **Ending otherwise.** A copy that fails, is handed back, expires or is lost is dropped
  and the task goes on with the original (a failure of the copy counts against its
  worker as evidence, not against the task's attempts). An original that is lost, handed
  back or fails in a way that could be retried while its copy lives hands the task to the
  copy (``carry_on``), counting the loss or failure. Cancelling the job stops both.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from parallel_pilot.coordinator.services import blobs, trust
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.payloads import task_payloads
from parallel_pilot.core.protocol import (
    AttemptReport,
    AttemptStop,
    Capabilities,
    ReportVerdict,
    SyncRequest,
    TaskLease,
)
from parallel_pilot.core.settings import CoordinatorSettings
from parallel_pilot.errors import OutputNotUploaded
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import copies as qc
from parallel_pilot.store.queries import sync as qs
from parallel_pilot.store.queries import workers as qw

log = logging.getLogger("pilot.stragglers")

CANDIDATES = 32  # running tasks one backup search weighs at most (longest running first)
REAP_BATCH = 200  # expired copies ended per reaper pass

Row = sa.Row[Any]


# ---------------------------------------------------------------- the rule (pure)


@dataclass(frozen=True)
class Pace:
    """How long a job's finished tasks took: overall and per worker (medians, seconds)."""

    median: float | None
    by_worker: dict[int, float]

    @classmethod
    def of(cls, durations: Iterable[tuple[int | None, float]]) -> Pace:
        seen = [(w, max(0.0, s)) for w, s in durations]
        per: dict[int, list[float]] = {}
        for worker, seconds in seen:
            if worker is not None:
                per.setdefault(worker, []).append(seconds)
        return cls(statistics.median(s for _, s in seen) if seen else None,
                   {w: statistics.median(v) for w, v in per.items()})


def behind(elapsed: float, progress: float | None, pace: Pace, original: int | None,
           copy_on: int, settings: CoordinatorSettings) -> float | None:
    """How far behind a running attempt is (its expected seconds left, or its running
    time when that is not known or passed), if a backup copy on worker ``copy_on`` is
    worth it; None if not (see the module docstring). ``original``: the attempt's
    worker."""
    factor = settings.backup_factor
    if elapsed < settings.backup_min_seconds:
        return None
    if pace.median is None:  # nothing of the job finished yet: only a long run counts
        return elapsed if elapsed >= settings.backup_after_seconds else None
    # what it should take: the pace measured here for its worker on this job; time left
    # from that, else from the progress it reports (a claim: it decides only where
    # nothing was measured, and lying can only delay a backup until the attempt is late)
    own = pace.by_worker.get(original) if original is not None else None
    left = own - elapsed if own is not None else \
        elapsed * (1 - progress) / progress if progress is not None and 0 < progress < 1 \
        else None
    if left is not None and left > pace.by_worker.get(copy_on, pace.median):
        return left  # slow: a copy here should finish before it
    if elapsed >= factor * (own if own is not None else pace.median):
        return elapsed  # late: it ran far longer than it should (stuck, or slowed down)
    return None


# ---------------------------------------------------------------- leasing copies


def backups(conn: sa.Connection, svc: Services, worker: Row, me: Row, caps: Capabilities,
            sets: Sequence[int], free: int, now: float) -> list[TaskLease]:
    """Up to ``free`` backup copies for a worker whose claim found nothing (``me``: its
    row as locked by the exchange; ``sets``: the requirement sets it meets)."""
    settings = svc.settings
    if not settings.backup_copies or free <= 0 or not caps.kinds:
        return []
    tail = qc.jobs_in_their_tail(conn)
    if not tail:
        return []
    rows = qc.backup_candidates(
        conn, job_ids=tail, worker_id=me.id, kinds=caps.kinds, sets=sets,
        leased_before=now - settings.backup_min_seconds,
        block_threshold=settings.worker_block_failures, join_token_id=trust.token_of(me),
        token_threshold=settings.join_token_block_failures, limit=CANDIDATES,
        lock=svc.lock_claims)
    if not rows:
        return []
    paces = {j: Pace.of(qc.finished_durations(conn, j)) for j in sorted({r.job_id
                                                                        for r in rows})}
    scored = []
    for row in rows:
        how_far = behind(now - (row.leased_at or now), row.progress, paces[row.job_id],
                         row.worker_id, me.id, settings)
        if how_far is not None:
            scored.append((how_far, row))
    if not scored:
        return []
    running = qc.running_by_owner(conn, {r.owner_id for _, r in scored})
    scored.sort(key=lambda x: (running.get(x[1].owner_id, 0), -x[1].priority, -x[0],
                               x[1].id))
    chosen = scored[:free]
    expires = now + settings.lease_seconds
    lines: list[tuple[int, int, int, str]] = []
    leased: list[tuple[float, Row]] = []
    for how_far, row in chosen:
        number = qs.next_attempt_of(row)
        if not qc.insert_copy(conn, task_id=row.id, attempt=number, job_id=row.job_id,
                              worker_id=me.id, backs_attempt=row.attempt,
                              expires_at=expires, now=now):
            continue  # cannot happen under the candidates' locks; never lease blind
        leased.append((how_far, row))
        pace = paces[row.job_id]
        took = (f"the job's tasks take {_seconds(pace.median)} (median)"
                if pace.median is not None else "no task of the job has finished yet")
        lines.append((row.job_id, row.id, number,
                      f"backup copy: attempt {number} on worker {worker.name}; attempt "
                      f"{row.attempt} on worker {_name(conn, row.worker_id)} has run "
                      f"{_seconds(now - (row.leased_at or now))} ({took}; about "
                      f"{_seconds(how_far)} behind)"))
    if not leased:
        return []
    qs.insert_logs(conn, lines, now)
    log.info("worker %s (%d) took %d backup cop%s", worker.name, me.id, len(leased),
             "y" if len(leased) == 1 else "ies")
    payloads = task_payloads(conn, [row for _, row in leased])
    beat = settings.heartbeat_seconds
    return [TaskLease(task_id=row.id, attempt=line[2], job_id=row.job_id, kind=row.kind,
                      name=row.name, payload=payload, inputs=row.inputs,
                      lease_expires_at=expires, heartbeat_seconds=beat)
            for (_, row), payload, line in zip(leased, payloads, lines, strict=True)]


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def _name(conn: sa.Connection, worker_id: int | None) -> str:
    row = q.get_worker(conn, worker_id) if worker_id is not None else None
    return row.name if row is not None else f"#{worker_id}"


# ---------------------------------------------------------------- the exchange


def held(conn: sa.Connection, svc: Services, worker_id: int, request: SyncRequest,
         originals: dict[int, Row]) -> dict[int, Row]:
    """Task id -> the live copy the worker holds (``queries.copies.held_copies``' rows),
    read only when the request names an attempt that is not among ``originals`` (the
    attempts leased to it in the task rows): a worker holding no copy pays nothing."""
    named = [(r.task_id, r.attempt) for r in request.reports]
    named += [(h.task_id, h.attempt) for h in request.held]
    if all(t in originals and originals[t].attempt == a for t, a in named):
        return {}
    return {r.id: r for r in qc.held_copies(conn, worker_id, lock=svc.lock_claims)}


@dataclass
class CopyReports:
    """What ``apply_reports`` did with the reports on copies."""

    rest: list[AttemptReport]  # reports for the exchange's usual path (winners included)
    verdicts: dict[int, ReportVerdict]  # id(report) -> verdict, for reports handled here
    settled: set[int]  # tasks whose copy left the worker here
    logs: list[tuple[Row, int, list[str]]]  # (task row, attempt, lines) to store


def apply_reports(conn: sa.Connection, svc: Services, worker: Row,
                  reports: Sequence[AttemptReport], originals: dict[int, Row],
                  copies: dict[int, Row], now: float) -> CopyReports:
    """Reports on the worker's live copies. A valid result makes the copy the task's
    attempt (``queries.copies.take_over``) and joins ``originals`` with it, so the
    exchange completes the task as any other; a failure, a hand-back or a result naming
    outputs this worker did not upload drops the copy (the original goes on)."""
    out = CopyReports([], {}, set(), [])
    if not copies:
        out.rest = list(reports)
        return out
    won: list[int] = []
    seen: set[tuple[int, int]] = set()
    for report in reports:
        copy = copies.get(report.task_id)
        key = (report.task_id, report.attempt)
        if copy is None or copy.attempt != report.attempt or key in seen:
            out.rest.append(report)
            continue
        seen.add(key)
        verdict = _apply_one(conn, svc, worker, report, copy, out, now)
        if verdict is None:  # the exchange completes it, its log lines with it
            won.append(copy.id)
            out.rest.append(report)
        else:
            out.verdicts[id(report)] = verdict
            if report.log_lines:
                out.logs.append((copy, copy.attempt, report.log_lines))
    if won:
        originals.update(qc.held_rows(conn, won))
    return out


def _apply_one(conn: sa.Connection, svc: Services, worker: Row, report: AttemptReport,
               copy: Row, out: CopyReports, now: float) -> ReportVerdict | None:
    """One report on a live copy: its verdict, or None when the copy won the task."""
    accepted = ReportVerdict(task_id=copy.id, attempt=copy.attempt, accepted=True)
    if report.outcome == "running":
        return accepted
    line = f"backup copy attempt {copy.attempt} on worker {worker.name}"
    if report.outcome == "completed":
        try:
            blobs.granted_outputs(conn, worker.id, copy.id, copy.attempt, report.outputs,
                                  inputs=copy.inputs)
        except OutputNotUploaded as exc:
            qw.record_worker_failure(conn, worker.id, copy.job_id, trust.token_of(worker))
            _drop(conn, worker, copy, "refused", f"{line}: its report was refused "
                  f"({exc.message}); attempt {copy.backs_attempt} goes on", out, now)
            return ReportVerdict(task_id=copy.id, attempt=copy.attempt, accepted=False,
                                 reason=exc.message)
        if qc.take_over(conn, copy.id, copy.backs_attempt, _as_copy(copy), now,
                        outcome="won"):
            qs.insert_logs(conn, [(copy.job_id, copy.id, copy.attempt,
                                   f"{line} finished first; attempt {copy.backs_attempt} "
                                   f"on worker {_name(conn, copy.original_worker)} is "
                                   "told to stop")], now)
            log.info("task %d: backup copy (attempt %d, worker %s) won", copy.id,
                     copy.attempt, worker.name)
            return None
        return ReportVerdict(task_id=copy.id, attempt=copy.attempt, accepted=False,
                             reason="the task is no longer running")
    if report.outcome == "failed":
        # evidence about the task and the worker (blocklists, a repeated reason), but the
        # task's attempts are the original's: it goes on
        trust.weigh_failure(conn, svc, worker, copy, report.retryable, now, report.reason)
        _drop(conn, worker, copy, "failed", f"{line} failed: "
              f"{(report.reason or 'failed')[:2000]}; attempt {copy.backs_attempt} goes on",
              out, now)
        return accepted
    _drop(conn, worker, copy, "released", f"{line} was handed back; attempt "
          f"{copy.backs_attempt} goes on", out, now)
    return accepted


def _as_copy(copy: Row) -> Any:
    """A held copy row in the shape ``take_over`` reads (the copy's lease and start)."""
    return _Copy(copy.attempt, copy.worker_id, copy.copy_expires_at, copy.copy_started_at)


@dataclass(frozen=True)
class _Copy:
    attempt: int
    worker_id: int
    lease_expires_at: float
    started_at: float


def _drop(conn: sa.Connection, worker: Row, copy: Row, outcome: str, line: str,
          out: CopyReports, now: float) -> None:
    qc.end_copies(conn, worker.id, [(copy.id, copy.attempt)], outcome, now)
    qs.insert_logs(conn, [(copy.job_id, copy.id, copy.attempt, line)], now)
    out.settled.add(copy.id)


def in_order(reports: Sequence[AttemptReport], rest: Sequence[AttemptReport],
             rest_verdicts: Sequence[ReportVerdict],
             copy_verdicts: dict[int, ReportVerdict]) -> list[ReportVerdict]:
    """The verdicts of every report of the request, in its order."""
    by_report = {id(r): v for r, v in zip(rest, rest_verdicts, strict=True)}
    by_report.update(copy_verdicts)
    return [by_report[id(r)] for r in reports]


def reconcile(conn: sa.Connection, worker: Row, copies: dict[int, Row], settled: set[int],
              listed: dict[int, int], leaving: bool, now: float) -> dict[int, Row]:
    """The worker's live copies that stay its after this exchange; those it does not list
    as held (an answer lost on the way) or hands back by leaving are dropped."""
    kept = {t: c for t, c in copies.items() if t not in settled}
    gone = [c for t, c in kept.items() if leaving or listed.get(t) != c.attempt]
    for copy in gone:
        del kept[copy.id]
        qc.end_copies(conn, worker.id, [(copy.id, copy.attempt)],
                      "released" if leaving else "lost", now)
    if gone:
        why = (f"worker {worker.name} is leaving" if leaving else
               f"it never reached worker {worker.name}")
        qs.insert_logs(conn, [(c.job_id, c.id, c.attempt,
                               f"backup copy attempt {c.attempt} dropped ({why}); attempt "
                               f"{c.backs_attempt} goes on") for c in gone], now)
    return kept


def stopped(conn: sa.Connection, worker_id: int, stops: Sequence[AttemptStop],
            verdicts: Sequence[ReportVerdict], kept: dict[int, Row], now: float) -> None:
    """Copies the worker was told to stop, or whose report was refused, are ended (the
    task finished, was cancelled or moved on without them); not those it keeps (a report
    refused for being sent twice in one sync)."""
    keys = [(s.task_id, s.attempt) for s in stops]
    keys += [(v.task_id, v.attempt) for v in verdicts if not v.accepted]
    keys = [(t, a) for t, a in keys if t not in kept or kept[t].attempt != a]
    if keys:
        qc.end_copies(conn, worker_id, keys, "stopped", now)


def renew(conn: sa.Connection, worker_id: int, copies: dict[int, Row],
          expires_at: float) -> None:
    if copies:
        qc.renew_copies(conn, worker_id, list(copies), expires_at)


# ---------------------------------------------------------------- the original ends


def carry_on(conn: sa.Connection, ends: Sequence[tuple[Row, str]], now: float, *,
             lost: int = 0, failed: int = 0) -> set[int]:
    """Attempts about to end (rows with id, job_id, attempt; each with why, e.g. "lost
    with its worker") whose task has a live copy: the copy takes the task's place
    instead of a requeue, the loss or failure counted (a failure's why becomes the task's
    error). Returns the ids of the tasks handed to their copies; the caller requeues or
    fails the rest as before."""
    if not ends:
        return set()
    copies = qc.open_copies_of(conn, [r.id for r, _ in ends],
                               lock=conn.dialect.name != "sqlite")
    carried: set[int] = set()
    for row, why in ends:
        copy = copies.get(row.id)
        if copy is None or copy.backs_attempt != row.attempt or copy.lease_expires_at < now:
            continue
        if qc.take_over(conn, row.id, row.attempt, copy, now, outcome="promoted",
                        lost=lost, failed=failed, error=why if failed else None):
            carried.add(row.id)
            qs.insert_logs(conn, [(row.job_id, row.id, row.attempt,
                                   f"attempt {row.attempt} ended ({why[:2000]}); its backup "
                                   f"copy, attempt {copy.attempt} on worker "
                                   f"{_name(conn, copy.worker_id)}, carries on")], now)
    return carried


def drop_worker(conn: sa.Connection, worker_id: int, why: str, now: float) -> None:
    """Every open copy of a worker that restarted or was revoked is dropped."""
    rows = qc.end_worker_copies(conn, worker_id, "lost", now)
    qs.insert_logs(conn, [(r.job_id, r.task_id, r.attempt,
                           f"backup copy attempt {r.attempt} dropped ({why})")
                          for r in rows], now)


def reap(conn: sa.Connection, now: float) -> int:
    """Copies whose lease ran out (their worker vanished) are dropped; the original goes
    on. Returns how many."""
    rows = qc.end_expired_copies(conn, now, REAP_BATCH)
    qs.insert_logs(conn, [(r.job_id, r.task_id, r.attempt,
                           f"backup copy attempt {r.attempt} dropped (its lease expired: "
                           "worker lost)") for r in rows], now)
    return len(rows)
