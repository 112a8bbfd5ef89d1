"""The statements of backup copies (``services.stragglers``; table ``task_copies``).

A copy is a second live attempt of a leased task, on another worker, under its own
attempt number. It is *live* while it has not ended and the task is still leased under
the attempt it backs up (``backs_attempt``): when the task completes, fails, is cancelled
or is requeued, its copies stop being live without a write here, and they are marked
ended when their worker is told to stop or their lease runs out. Every write to a task
row stays fenced by (task, attempt, state leased); every write to a copy by its key and
``ended_at IS NULL``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.store.queries._common import Row, _chunks
from parallel_pilot.store.queries.sync import NO_TOKEN, _not_blocked
from parallel_pilot.store.tables import jobs, task_copies, task_outputs, tasks

_b = sa.bindparam
DURATION_SAMPLE = 101  # finished tasks of a job whose durations make its median

def _live() -> sa.ColumnElement[bool]:
    """The copy has not ended and its task is still leased under the attempt it backs up
    (for a statement over ``task_copies`` joined to ``tasks``)."""
    return sa.and_(task_copies.c.ended_at.is_(None), tasks.c.id == task_copies.c.task_id,
                   tasks.c.state == TaskState.LEASED,
                   tasks.c.attempt == task_copies.c.backs_attempt)


# a copy as the exchange handles a held attempt: the task's columns, the copy's number
_HELD = (sa.select(tasks.c.id, tasks.c.job_id, task_copies.c.attempt, tasks.c.kind,
                   tasks.c.idx, tasks.c.name, tasks.c.failures, tasks.c.max_attempts,
                   tasks.c.state, tasks.c.losses, task_copies.c.worker_id, tasks.c.inputs,
                   tasks.c.requirement_set_id, tasks.c.attempt.label("backs_attempt"),
                   tasks.c.worker_id.label("original_worker"),
                   task_copies.c.started_at.label("copy_started_at"),
                   task_copies.c.lease_expires_at.label("copy_expires_at"))
         .select_from(task_copies.join(tasks, tasks.c.id == task_copies.c.task_id))
         .where(task_copies.c.worker_id == _b("w"), _live())
         .order_by(tasks.c.id))
_HELD_LOCKED = _HELD.with_for_update()


def held_copies(conn: sa.Connection, worker_id: int, *, lock: bool) -> list[Row]:
    """The live copies the worker holds, shaped like ``sync.held_attempts``' rows (the
    copy's attempt and worker) plus ``backs_attempt``, ``original_worker``,
    ``copy_started_at`` and ``copy_expires_at``; with ``lock`` their tasks' rows stay
    locked to this transaction (the original's exchange waits for this one)."""
    return list(conn.execute(_HELD_LOCKED if lock else _HELD, {"w": worker_id}))


_LIVE_COPY = (sa.select(task_copies.c.attempt)
              .select_from(task_copies.join(tasks, tasks.c.id == task_copies.c.task_id))
              .where(task_copies.c.task_id == _b("t"), task_copies.c.attempt == _b("a"),
                     task_copies.c.worker_id == _b("w"), _live()))


def is_live_copy(conn: sa.Connection, task_id: int, attempt: int, worker_id: int) -> bool:
    """Whether (task, attempt) is a live copy held by the worker."""
    return conn.execute(_LIVE_COPY, {"t": task_id, "a": attempt, "w": worker_id}
                        ).first() is not None


_OPEN_OF: sa.Select[Any] = (sa.select(task_copies.c.task_id, task_copies.c.attempt,
                      task_copies.c.worker_id, task_copies.c.backs_attempt,
                      task_copies.c.lease_expires_at, task_copies.c.started_at)
            .where(task_copies.c.task_id.in_(_b("ids", expanding=True)),
                   task_copies.c.ended_at.is_(None))
            .order_by(task_copies.c.task_id, task_copies.c.attempt))
_LOCK_TASKS = (sa.select(tasks.c.id).where(tasks.c.id.in_(_b("ids", expanding=True)))
               .order_by(tasks.c.id).with_for_update())


def open_copies_of(conn: sa.Connection, task_ids: Sequence[int], *,
                   lock: bool) -> dict[int, Row]:
    """Task id -> its open copy (not ended; the caller checks which attempt it backs up),
    for tasks whose attempt is about to end. One statement when none has a copy (the
    usual case); else, with ``lock``, their task rows are locked first and the copies
    read again, so a copy's own exchange cannot end it meanwhile."""
    ids = sorted(set(task_ids))
    if not ids:
        return {}
    found = _open_of(conn, ids)
    if found and lock:
        conn.execute(_LOCK_TASKS, {"ids": sorted(found)})
        found = _open_of(conn, sorted(found))
    return found


def _open_of(conn: sa.Connection, ids: Sequence[int]) -> dict[int, Row]:
    out: dict[int, Row] = {}
    for part in _chunks(list(ids)):
        for row in conn.execute(_OPEN_OF, {"ids": list(part)}):
            out.setdefault(row.task_id, row)
    return out


# ---------------------------------------------------------------- writes

_TAKE_OVER = (tasks.update()
              .where(tasks.c.id == _b("t"), tasks.c.attempt == _b("a"),
                     tasks.c.state == TaskState.LEASED)
              .values(attempt=_b("c"), worker_id=_b("cw"), lease_expires_at=_b("expires"),
                      leased_at=_b("started"), progress=None, message=None,
                      losses=tasks.c.losses + _b("lost"),
                      failures=tasks.c.failures + _b("failed"),
                      error=sa.func.coalesce(_b("error", type_=sa.Text), tasks.c.error)))
_END = (task_copies.update()
        .where(task_copies.c.task_id == _b("t"), task_copies.c.attempt == _b("c"),
               task_copies.c.ended_at.is_(None))
        .values(ended_at=_b("now"), outcome=_b("outcome")))


def take_over(conn: sa.Connection, task_id: int, attempt: int, copy: Row, now: float, *,
              outcome: str, lost: int = 0, failed: int = 0, error: str | None = None) -> bool:
    """The copy becomes the task's attempt (its number, worker, lease and start) in place
    of ``attempt``, which ended (``lost``/``failed`` counted); the copy row is ended with
    ``outcome``. False (nothing written) when the task is no longer leased under
    ``attempt``."""
    if not conn.execute(_TAKE_OVER, {
            "t": task_id, "a": attempt, "c": copy.attempt, "cw": copy.worker_id,
            "expires": copy.lease_expires_at, "started": copy.started_at, "lost": lost,
            "failed": failed, "error": None if error is None else error[:10_000]}).rowcount:
        return False
    conn.execute(_END, {"t": task_id, "c": copy.attempt, "now": now, "outcome": outcome})
    return True


_END_OF_WORKER = _END.where(task_copies.c.worker_id == _b("w"))


def end_copies(conn: sa.Connection, worker_id: int, keys: Sequence[tuple[int, int]],
               outcome: str, now: float) -> int:
    """(task, attempt) copies of the worker -> ended with ``outcome`` (those still open)."""
    if not keys:
        return 0
    return conn.execute(_END_OF_WORKER, [
        {"t": t, "c": a, "w": worker_id, "now": now, "outcome": outcome}
        for t, a in sorted(set(keys))]).rowcount


_OPEN_OF_WORKER: sa.Select[Any] = (sa.select(task_copies.c.task_id, task_copies.c.attempt,
                             task_copies.c.job_id)
                   .where(task_copies.c.worker_id == _b("w"),
                          task_copies.c.ended_at.is_(None)))


def end_worker_copies(conn: sa.Connection, worker_id: int, outcome: str,
                      now: float) -> list[Row]:
    """Every open copy of the worker -> ended (it restarted, was revoked); returns them
    (task_id, attempt, job_id)."""
    rows = list(conn.execute(_OPEN_OF_WORKER, {"w": worker_id}))
    end_copies(conn, worker_id, [(r.task_id, r.attempt) for r in rows], outcome, now)
    return rows


_RENEW = (task_copies.update()
          .where(task_copies.c.worker_id == _b("w"), task_copies.c.ended_at.is_(None),
                 task_copies.c.task_id.in_(_b("ids", expanding=True)))
          .values(lease_expires_at=_b("expires")))


def renew_copies(conn: sa.Connection, worker_id: int, task_ids: Sequence[int],
                 expires_at: float) -> None:
    """The worker's open copies of these tasks are its until ``expires_at``."""
    for part in _chunks(sorted(set(task_ids))):
        conn.execute(_RENEW, {"w": worker_id, "ids": list(part), "expires": expires_at})


_EXPIRED: sa.Select[Any] = (
    sa.select(task_copies.c.task_id, task_copies.c.attempt, task_copies.c.job_id,
              task_copies.c.worker_id)
    .where(task_copies.c.ended_at.is_(None), task_copies.c.lease_expires_at < _b("now"))
    .order_by(task_copies.c.lease_expires_at).limit(_b("limit")))
_END_EXPIRED = _END.where(task_copies.c.lease_expires_at < _b("now"))


def end_expired_copies(conn: sa.Connection, now: float, limit: int) -> list[Row]:
    """Open copies whose lease ran out -> ended ``expired``; returns those ended (task_id,
    attempt, job_id, worker_id)."""
    rows = list(conn.execute(_EXPIRED, {"now": now, "limit": limit}))
    ended = [r for r in rows if conn.execute(_END_EXPIRED, {
        "t": r.task_id, "c": r.attempt, "now": now, "outcome": "expired"}).rowcount]
    return ended


def extend_all_copies(conn: sa.Connection, expires_at: float) -> int:
    """Give every open copy until at least ``expires_at`` (a coordinator restart)."""
    return conn.execute(
        task_copies.update().where(task_copies.c.ended_at.is_(None),
                                   task_copies.c.lease_expires_at < expires_at)
        .values(lease_expires_at=expires_at)).rowcount


_NOTE_COPY = (tasks.update().where(tasks.c.id == _b("t"), tasks.c.attempt == _b("a"),
                                   tasks.c.state == TaskState.LEASED)
              .values(last_copy_attempt=_b("c")))


def insert_copy(conn: sa.Connection, *, task_id: int, attempt: int, job_id: int,
                worker_id: int, backs_attempt: int, expires_at: float, now: float) -> bool:
    """A copy of the task's attempt ``backs_attempt`` under the new number ``attempt``
    (``sync.next_attempt_of`` the task), noted on the task so that no later lease takes
    the number again; False (nothing written) if the task moved on meanwhile."""
    if not conn.execute(_NOTE_COPY, {"t": task_id, "a": backs_attempt, "c": attempt}).rowcount:
        return False
    conn.execute(task_copies.insert().values(
        task_id=task_id, attempt=attempt, job_id=job_id, worker_id=worker_id,
        backs_attempt=backs_attempt, lease_expires_at=expires_at, started_at=now))
    return True


# ---------------------------------------------------------------- choosing a straggler

_TAIL_JOBS = (sa.select(jobs.c.id)
              .where(jobs.c.state == JobState.RUNNING, jobs.c.count_ready == 0,
                     jobs.c.count_leased > 0)
              .order_by(jobs.c.id))


def jobs_in_their_tail(conn: sa.Connection) -> list[int]:
    """Running jobs with tasks leased and none waiting to be leased: the only jobs whose
    tasks get backup copies."""
    return list(conn.execute(_TAIL_JOBS).scalars())


_CANDIDATE_COLUMNS = (tasks.c.id, tasks.c.job_id, tasks.c.kind, tasks.c.name,
                      tasks.c.payload, tasks.c.inputs, tasks.c.attempt,
                      tasks.c.last_copy_attempt, tasks.c.worker_id,
                      tasks.c.leased_at, tasks.c.progress, tasks.c.owner_id,
                      tasks.c.priority)


def _no_copy_for() -> sa.ColumnElement[bool]:
    """No open copy backs up the task's attempt, and this worker never had a copy of it."""
    return sa.and_(
        ~sa.exists().where(task_copies.c.task_id == tasks.c.id,
                           task_copies.c.ended_at.is_(None),
                           task_copies.c.backs_attempt == tasks.c.attempt),
        ~sa.exists().where(task_copies.c.task_id == tasks.c.id,
                           task_copies.c.worker_id == _b("w")))


def _candidates_statement(lock: bool) -> sa.Select:
    query = (sa.select(*_CANDIDATE_COLUMNS)
             .where(tasks.c.job_id.in_(_b("jobs", expanding=True)),
                    tasks.c.state == TaskState.LEASED,
                    tasks.c.kind.in_(_b("kinds", expanding=True)),
                    tasks.c.requirement_set_id.in_(_b("sets", expanding=True)),
                    tasks.c.worker_id != _b("w"), tasks.c.leased_at <= _b("before"),
                    tasks.c.skipped.is_(False),  # its quorum went on without it: not waited for
                    _not_blocked(), _no_copy_for())
             .order_by(tasks.c.leased_at, tasks.c.id).limit(_b("limit")))
    return query.with_for_update(skip_locked=True) if lock else query


_CANDIDATES = {lock: _candidates_statement(lock) for lock in (False, True)}


def backup_candidates(conn: sa.Connection, *, job_ids: Sequence[int], worker_id: int,
                      kinds: Sequence[str], sets: Sequence[int], leased_before: float,
                      block_threshold: int, join_token_id: int | None,
                      token_threshold: int, limit: int, lock: bool) -> list[Row]:
    """Leased tasks of these jobs that the worker could take (its kinds and requirement
    sets, jobs it is not blocked from), held by another worker since ``leased_before`` or
    earlier, with no open copy and none ever on this worker; longest running first. With
    ``lock`` the rows are locked, skipping those another exchange holds (their worker is
    reporting on them now)."""
    if not job_ids or not kinds or not sets:
        return []
    return list(conn.execute(_CANDIDATES[lock], {
        "jobs": sorted(set(job_ids)), "kinds": sorted(set(kinds)),
        "sets": sorted(set(sets)), "w": worker_id, "before": leased_before,
        "threshold": block_threshold, "token_threshold": token_threshold,
        "jt": NO_TOKEN if join_token_id is None else join_token_id, "limit": limit}))


_DURATIONS = (sa.select(tasks.c.worker_id, (tasks.c.finished_at - tasks.c.leased_at)
                        .label("seconds"))
              .where(tasks.c.job_id == _b("j"), tasks.c.state == TaskState.DONE,
                     tasks.c.leased_at.is_not(None), tasks.c.finished_at.is_not(None))
              .order_by(tasks.c.id.desc()).limit(DURATION_SAMPLE))


def finished_durations(conn: sa.Connection, job_id: int) -> list[tuple[int | None, float]]:
    """(worker, seconds its attempt took) of the job's latest finished tasks."""
    return [(w, float(s)) for w, s in conn.execute(_DURATIONS, {"j": job_id})]


# ---------------------------------------------------------------- reading

_COUNTS = (sa.select(sa.func.count(),
                     sa.func.coalesce(sa.func.sum(sa.case(
                         (sa.and_(tasks.c.state == TaskState.DONE,
                                  tasks.c.attempt == task_copies.c.attempt), 1),
                         else_=0)), 0))
           .select_from(task_copies.join(tasks, tasks.c.id == task_copies.c.task_id))
           .where(task_copies.c.job_id == _b("j")))


def copy_counts(conn: sa.Connection, job_id: int) -> tuple[int, int]:
    """(copies made, copies whose result finished their task) for a job."""
    made, won = conn.execute(_COUNTS, {"j": job_id}).one()
    return int(made), int(won)


def open_copy_task_ids(conn: sa.Connection) -> dict[int, list[int]]:
    """Worker id -> the tasks it holds live copies of (the farm list)."""
    out: dict[int, list[int]] = {}
    for worker_id, task_id in conn.execute(
            sa.select(task_copies.c.worker_id, task_copies.c.task_id)
            .select_from(task_copies.join(tasks, tasks.c.id == task_copies.c.task_id))
            .where(_live()).order_by(task_copies.c.task_id)):
        out.setdefault(worker_id, []).append(task_id)
    return out


# ---------------------------------------------------------------- blobs a copy may read


def blob_is_input_of_copy(conn: sa.Connection, worker_id: int, sha256: str) -> bool:
    """An input of a task the worker holds a live copy of."""
    return conn.execute(
        sa.select(tasks.c.id)
        .select_from(task_copies.join(tasks, tasks.c.id == task_copies.c.task_id))
        .where(task_copies.c.worker_id == worker_id, _live(),
               sa.cast(tasks.c.inputs, sa.Text).contains(sha256)).limit(1)
    ).first() is not None


def blob_is_output_of_copys_job(conn: sa.Connection, worker_id: int, sha256: str) -> bool:
    """An output of the job of a task the worker holds a live copy of."""
    copied_jobs = (sa.select(tasks.c.job_id)
                   .select_from(task_copies.join(tasks, tasks.c.id == task_copies.c.task_id))
                   .where(task_copies.c.worker_id == worker_id, _live()))
    return conn.execute(
        sa.select(task_outputs.c.id).where(task_outputs.c.sha256 == sha256,
                                           task_outputs.c.job_id.in_(copied_jobs)).limit(1)
    ).first() is not None


_HELD_ROWS: sa.Select[Any] = (
    sa.select(tasks.c.id, tasks.c.job_id, tasks.c.attempt, tasks.c.kind, tasks.c.idx,
              tasks.c.name, tasks.c.failures, tasks.c.max_attempts, tasks.c.state,
              tasks.c.losses, tasks.c.worker_id)
    .where(tasks.c.id.in_(_b("ids", expanding=True))))


def held_rows(conn: sa.Connection, task_ids: Sequence[int]) -> dict[int, Row]:
    """Task id -> the task as ``sync.held_attempts`` reads it (a copy that just took the
    task's place, for the exchange to complete it)."""
    out: dict[int, Row] = {}
    for part in _chunks(sorted(set(task_ids))):
        out.update((r.id, r) for r in conn.execute(_HELD_ROWS, {"ids": list(part)}))
    return out


_RUNNING_BY_OWNER = (sa.select(jobs.c.owner_id, sa.func.sum(jobs.c.count_leased))
                     .where(jobs.c.owner_id.in_(_b("owners", expanding=True)),
                            jobs.c.state.in_([JobState.QUEUED, JobState.RUNNING]))
                     .group_by(jobs.c.owner_id))


def running_by_owner(conn: sa.Connection, owner_ids: Iterable[int]) -> dict[int, int]:
    """Owner -> tasks of theirs leased now (fair share: ``queries.fair``)."""
    owners = sorted(set(owner_ids))
    if not owners:
        return {}
    return {int(o): int(n or 0) for o, n in conn.execute(_RUNNING_BY_OWNER,
                                                          {"owners": owners})}
