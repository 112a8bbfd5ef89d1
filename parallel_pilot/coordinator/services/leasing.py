"""Leases: workers register, claim tasks under numbered attempts, heartbeat, report; the
reaper requeues what a dead worker held. Every report is fenced by (task, attempt, worker)."""

from __future__ import annotations

import logging
import math
import operator
from collections import Counter
from typing import Any

import sqlalchemy as sa

from parallel_pilot.coordinator.services import (
    accounts,
    blobs,
    jobs,
    losses,
    quorum,
    rates,
    stragglers,
    trust,
)
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.held import held_running_task, held_task
from parallel_pilot.coordinator.tokens import WORKER_TOKEN_PREFIX, hash_token, new_token
from parallel_pilot.core.protocol import (
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    OutputRequest,
    RegisterRequest,
    RegisterResponse,
)
from parallel_pilot.core.requirements import MAX_GPU_COUNT
from parallel_pilot.core.states import TaskState
from parallel_pilot.errors import RateLimited, StaleAttempt
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import clean_result
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import accounts as account_queries
from parallel_pilot.store.queries import copies as qc
from parallel_pilot.store.queries import quorum as qq
from parallel_pilot.store.queries import sync as qs
from parallel_pilot.store.queries import workers as qw
from parallel_pilot.store.queries.locks import farm_lock

log = logging.getLogger("pilot.leasing")

REAP_BATCH = 200  # expired leases handled per reaper pass
REAPER_LOCK = "reaper"  # one coordinator of a farm reaps at a time (store/queries/locks.py)
AFFINITY_MEMORY = 20  # tasks a worker did lately whose affinity keys its claims prefer
MAX_LOG_LINE_CHARS = 4000  # characters kept of one log line
LOG_TRUNCATED = "[log truncated: limit {limit} bytes]"  # stored once when a task's log is full


def register(svc: Services, request: RegisterRequest) -> RegisterResponse:
    """A new row for a worker joining with a join token (its slots capped, pending when
    the token wants an admin's approval, at most so many a minute per token); or, for a
    worker that restarted and sends the id and token it was given, that row again
    (``_take_back``), with what an admin decided about it."""
    now = svc.clock()
    token = new_token(WORKER_TOKEN_PREFIX)
    capabilities = request.capabilities.model_dump(mode="json")
    claimed = request.capabilities.slots
    claimed_gpus = min(len(request.capabilities.gpus), MAX_GPU_COUNT)
    requeued: Counter[str] = Counter()
    with svc.transaction() as conn:
        taken_back = _take_back(conn, request, hash_token(token), capabilities, now)
        if taken_back is not None:
            worker_id = taken_back
            requeued = _requeue_held(conn, svc, worker_id, request.name, now)
            row = q.get_worker(conn, worker_id)
            joined = None if row is None or row.join_token_id is None else \
                account_queries.join_token_by_id(conn, row.join_token_id)
            token_max = joined.max_slots if joined else None
            slots = trust.allowed_slots(svc, claimed, token_max)
            gpu_slots = trust.allowed_gpu_slots(svc, claimed_gpus, token_max)
            qw.set_worker_slots(conn, worker_id, slots, gpu_slots)
            pending = bool(row is not None and row.pending)
        else:
            joined = accounts.use_join_token(conn, request.join_token, now)  # or Unauthorized
            wait = rates.count(conn, rates.REGISTRATIONS, joined.id,
                               svc.settings.join_token_registrations_per_minute, now)
            if wait is not None:
                raise RateLimited(
                    f"join token {joined.id} registered more than "
                    f"{svc.settings.join_token_registrations_per_minute} workers in a "
                    f"minute; try again in {math.ceil(wait)} s", retry_after=math.ceil(wait))
            slots = trust.allowed_slots(svc, claimed, joined.max_slots)
            gpu_slots = trust.allowed_gpu_slots(svc, claimed_gpus, joined.max_slots)
            pending = bool(joined.approval_required)
            worker_id = q.insert_worker(conn, request.name, hash_token(token), capabilities,
                                        now, join_token_id=joined.id, slots=slots,
                                        gpu_slots=gpu_slots, pending=pending)
    if taken_back is not None:
        svc.worker_cache.forget(worker_id)  # the old token stopped working
        log.info("worker %s (%d) is back%s", request.name, worker_id,
                 f"; {sum(requeued.values())} task(s) it held requeued" if requeued else "")
        svc.notifier.tasks_ready(requeued)
    else:
        log.info("worker %s (%d) joined%s", request.name, worker_id,
                 "; it waits for an admin's approval" if pending else "")
    return RegisterResponse(worker_id=worker_id, worker_token=token,
                            lease_seconds=svc.settings.lease_seconds,
                            heartbeat_seconds=svc.settings.heartbeat_seconds,
                            slots=slots, gpu_slots=gpu_slots, pending=pending)


def _take_back(conn: sa.Connection, request: RegisterRequest, new_token_hash: str,
               capabilities: dict[str, Any], now: float) -> int | None:
    """The id of the row the request may take back, now holding the new token; None
    unless the id, the name and the token (compared by hash, as every token) match a row
    that is not revoked. The old token stops working. No join token use is counted: the
    worker token proves the worker joined before, and revoking the worker is how an admin
    keeps it out."""
    if request.worker_id is None or request.worker_token is None:
        return None
    if not request.worker_token.startswith(WORKER_TOKEN_PREFIX):
        return None
    if not qw.take_back_worker(conn, request.worker_id, request.name,
                               hash_token(request.worker_token), new_token_hash,
                               capabilities, now):
        return None
    return request.worker_id


def _requeue_held(conn: sa.Connection, svc: Services, worker_id: int, name: str,
                  now: float) -> Counter[str]:
    """Tasks the row still holds: the restarted process does not run them, so they go
    back to the queue at once (a loss, no failure: ``services.losses``) rather than when
    their lease expires. Returns how many per kind."""
    held = qs.held_attempts(conn, worker_id, lock=conn.dialect.name != "sqlite")
    stragglers.drop_worker(conn, worker_id, f"worker {name} restarted", now)
    return losses.lose(conn, svc, held, [f"worker {name} restarted; task requeued (no "
                                         "attempt used)"] * len(held), now)


def prefer_affinity(conn: sa.Connection, worker_id: int, candidates: list[sa.Row],
                    want: int) -> list[sa.Row]:
    """The ``want`` tasks to lease from the candidates (in fair-share order): each owner
    gets as many as it has among the first ``want``, so fair share holds; among an owner's
    candidates, those with the same (job, affinity key) as a task this worker did lately
    come first (the one done last first) within the same priority, the rest in claim
    order. Only the candidate window is reordered, so nothing waits longer than one claim
    for it."""
    jobs_with_keys = sorted({c.job_id for c in candidates if c.affinity is not None})
    if not jobs_with_keys:
        return candidates[:want]
    recent = qq.worker_recent_affinities(conn, worker_id, jobs_with_keys, AFFINITY_MEMORY)
    rank = {key: i for i, key in reversed(list(enumerate(recent)))}

    def key(c: sa.Row) -> tuple[int, int]:
        return -c.priority, rank.get((c.job_id, c.affinity), len(rank))

    owner = operator.attrgetter("owner_id")
    preferred = {o: iter(sorted((c for c in candidates if owner(c) == o), key=key))
                 for o in {owner(c) for c in candidates}}
    return [next(preferred[owner(c)]) for c in candidates[:want]]


def _clean_lines(lines: list[str]) -> list[str]:
    return [line[:MAX_LOG_LINE_CHARS] for line in lines]


def _store_log(conn: sa.Connection, svc: Services, task: sa.Row, attempt: int,
               lines: list[str], now: float) -> None:
    """Store a worker's log lines up to the task's log limit; past it, lines are dropped
    and one marker line says so (a chatty task cannot fill the database)."""
    limit = svc.settings.max_log_bytes_per_task
    marker = LOG_TRUNCATED.format(limit=limit)
    kept: list[str] = []
    if lines:
        used = q.task_log_chars(conn, task.id)
        # near the limit, a marker already stored means the log is closed for good
        truncated = used + MAX_LOG_LINE_CHARS > limit and q.task_log_has_line(
            conn, task.id, marker)
        for line in [] if truncated else _clean_lines(lines):
            if used + len(line) > limit:
                kept.append(marker)
                break
            used += len(line)
            kept.append(line)
    q.insert_log_lines(conn, job_id=task.job_id, task_id=task.id, attempt=attempt,
                       lines=kept, now=now)


def heartbeat(svc: Services, worker: sa.Row, task_id: int, attempt: int,
              request: HeartbeatRequest) -> HeartbeatResponse:
    now = svc.clock()
    expires = now + svc.settings.lease_seconds
    with svc.transaction() as conn:
        task = held_task(conn, worker, task_id, attempt, copies=False)
        q.touch_worker(conn, worker.id, now)
        _store_log(conn, svc, task, attempt, request.log_lines, now)
        if task.state != TaskState.LEASED:
            reason = "job cancelled" if task.state == TaskState.CANCELLED else \
                f"task is {task.state}"
            return HeartbeatResponse(action="stop", reason=reason, lease_expires_at=now)
        q.extend_lease(conn, task_id, attempt, worker.id, expires, request.progress,
                       request.message)
    return HeartbeatResponse(action="continue", lease_expires_at=expires)


def add_output(svc: Services, worker: sa.Row, task_id: int, attempt: int,
               request: OutputRequest) -> None:
    """An output while the attempt runs: only a blob this worker uploaded for it (or one of
    its inputs) is taken (``services.blobs.granted_outputs``)."""
    now = svc.clock()
    with svc.transaction() as conn:
        task = held_running_task(conn, worker, task_id, attempt)
        granted = blobs.granted_outputs(conn, worker.id, task_id, attempt, [request],
                                        inputs=task.inputs, task=task)
        blobs.add_outputs(conn, task.job_id, task_id, attempt, granted, now)


def job_outputs(svc: Services, worker: sa.Row, task_id: int, attempt: int,
                prefix: str) -> list[sa.Row]:
    """Outputs so far of the job of a task the worker holds (an assembly step reads the
    frames its job's other tasks produced)."""
    with svc.transaction() as conn:
        task = held_task(conn, worker, task_id, attempt)
        return [r for r in q.job_outputs(conn, task.job_id) if r.path.startswith(prefix)]


def complete(svc: Services, worker: sa.Row, task_id: int, attempt: int,
             request: CompleteRequest) -> None:
    now = svc.clock()
    with svc.transaction() as conn:
        task = held_task(conn, worker, task_id, attempt, copies=False)
        if request.outputs:  # all of them, with the result, or the report is refused whole
            granted = blobs.granted_outputs(conn, worker.id, task_id, attempt,
                                            request.outputs, inputs=task.inputs, task=task)
            if task.state != TaskState.LEASED:
                raise StaleAttempt(f"task {task_id} is {task.state}; the result is not "
                                   "accepted")
            blobs.add_outputs(conn, task.job_id, task_id, attempt, granted, now)
        _store_log(conn, svc, task, attempt, request.log_lines, now)
        result = clean_result(get_kind(task.kind), request.result)
        if not q.complete_task(conn, task_id, attempt, worker.id, result, now):
            raise StaleAttempt(f"task {task_id} is {task.state}; the result is not accepted")
        q.add_worker_done(conn, worker.id)
        q.add_job_done(conn, task.job_id)
        pairs = qs.dependents_of(conn, [task_id])
        ready = qs.unblock(conn, Counter(t for t, _ in pairs))
        if pairs:  # most tasks have none: no quorum look-up
            quorum.after_dependency_done(conn, svc, task_id)
        jobs.finish_if_complete(conn, svc, task.job_id)
    if ready:  # a completion wakes long polls only when it unblocked tasks
        svc.notifier.tasks_ready(ready)
    elif pairs:  # a quorum may have let a dependent go ahead: kinds unknown
        svc.notifier.notify()


def fail(svc: Services, worker: sa.Row, task_id: int, attempt: int,
         request: FailRequest) -> None:
    now = svc.clock()
    with svc.transaction() as conn:
        task = held_task(conn, worker, task_id, attempt, copies=False)
        _store_log(conn, svc, task, attempt, request.log_lines, now)
        if task.state != TaskState.LEASED:
            raise StaleAttempt(f"task {task_id} is {task.state}; the report is not accepted")
        weighed = trust.weigh_failure(conn, svc, worker, task, request.retryable, now,
                                      request.reason)
        reason = (f"{request.reason} (attempt {attempt} on worker {worker.name}"
                  f"{trust.doubt_note(request.retryable, weighed.retry)})")
        # a retryable report still fails the task "after N attempts" when none are left
        requeued = _requeue_or_fail(conn, svc, task, reason,
                                    retry=weighed.retry or request.retryable,
                                    fast=trust.repeat_note(weighed) if weighed.repeated
                                    else None)
    if requeued:
        svc.notifier.tasks_ready({task.kind: 1})


def release(svc: Services, worker: sa.Row, task_id: int, attempt: int) -> None:
    """The worker hands the task back (shutting down); no failure is counted."""
    with svc.transaction() as conn:
        task = held_task(conn, worker, task_id, attempt, copies=False)
        carried = task.state == TaskState.LEASED and stragglers.carry_on(
            conn, [(task, f"handed back by worker {worker.name}")], svc.clock())
        requeued = task.state == TaskState.LEASED and not carried and q.requeue_task(
            conn, task_id, attempt, count_failure=False, error=None)
        if requeued:
            q.insert_log_lines(conn, job_id=task.job_id, task_id=task_id, attempt=attempt,
                               lines=[f"handed back by worker {worker.name}"], now=svc.clock())
    if requeued:
        svc.notifier.tasks_ready({task.kind: 1})


def _requeue_or_fail(conn: sa.Connection, svc: Services, task: sa.Row, reason: str,
                     retry: bool, fast: str | None = None) -> bool:
    """A failed attempt: requeued (True) while attempts remain and a retry can help, or
    the task fails for good (and with it the job, unless a quorum absorbs it); at once,
    saying ``fast``, when the same failure repeated on other workers
    (``trust.weigh_failure``). A live backup copy of the task takes over from a failure
    that could be retried (``stragglers.carry_on``), with or without attempts left."""
    if retry and fast is None and stragglers.carry_on(conn, [(task, reason)], svc.clock(),
                                                      failed=1):
        return False
    if retry and fast is None and task.failures + 1 < task.max_attempts:
        return q.requeue_task(conn, task.id, task.attempt, count_failure=True, error=reason)
    if q.fail_task(conn, task.id, task.attempt, reason, svc.clock()):
        if quorum.absorb_failure(conn, svc, task):
            return False  # its dependents' quorum decides whether the job goes on
        tried = fast or (f"after {task.failures + 1} attempts" if retry
                         else "and a retry cannot help")
        jobs.fail_job(conn, svc, task.job_id,
                      f"{jobs.task_label(task.idx, task.name)} failed {tried}: {reason}")
    return False


def reap(svc: Services) -> int:
    """Tasks whose lease expired (their worker vanished): requeued without using an
    attempt, or failed past ``max_losses`` (``services.losses``); returns how many. The
    worker is not blamed either: a machine that dies is not evidence against the task
    nor a failure of the job by the worker. A pass finding another coordinator of the farm
    reaping does nothing."""
    now = svc.clock()
    with svc.transaction() as conn, farm_lock(conn, REAPER_LOCK) as ours:
        if not ours:  # another coordinator of the farm reaps right now
            return 0
        copies = stragglers.reap(conn, now)  # first: an expired copy cannot take over
        expired = q.expired_leases(conn, now, REAP_BATCH)
        ready = losses.lose(conn, svc, expired, [
            f"lease of attempt {t.attempt} expired (worker lost); task requeued (no "
            "attempt used)" for t in expired], now)
    if copies:
        log.info("dropped %d backup cop%s whose lease expired", copies,
                 "y" if copies == 1 else "ies")
    if expired:
        log.info("requeued %d task(s) whose lease expired", len(expired))
        svc.notifier.tasks_ready(ready)
        if sum(ready.values()) < len(expired):
            svc.notifier.notify()  # a task lost too often failed: its job may have ended
    quorum.release_due(svc)
    return len(expired)


def grant_restart_grace(svc: Services) -> int:
    """At coordinator start, give every held lease a full lease period: workers kept
    working while the coordinator was down and need a chance to heartbeat again."""
    with svc.transaction() as conn:
        qc.extend_all_copies(conn, svc.clock() + svc.settings.lease_seconds)
        return q.extend_all_leases(conn, svc.clock() + svc.settings.lease_seconds)


def leave(svc: Services, worker: sa.Row) -> None:
    with svc.transaction() as conn:
        q.mark_worker_left(conn, worker.id, svc.clock())
    svc.worker_cache.forget(worker.id)

