"""The statements of the worker exchange (``POST /workers/sync``): requirement sets, the
worker's held attempts, results and requeues of many attempts at once, one lease expiry
per worker, and the claim that picks fitting tasks in SQL, in fair-share order across
users (``claim_candidates``; the policy in ``queries/fair.py``).

Hot statements are built once at import (``sa.bindparam``), so a sync pays for executing
them, not for building them. Every write to a task stays fenced by (task, attempt,
worker, state leased)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.states import TaskState
from parallel_pilot.store.queries import matching
from parallel_pilot.store.queries._common import Row, _chunks
from parallel_pilot.store.queries.fair import owner_queues
from parallel_pilot.store.queries.moves import task_move
from parallel_pilot.store.tables import (
    jobs,
    requirement_sets,
    task_deps,
    task_logs,
    tasks,
    token_job_failures,
    worker_job_failures,
    workers,
)

NO_REQUIREMENTS = 0  # requirement_set_id of a task with no requirements (no row)
NO_TOKEN = -1  # join token id bound for a worker not held to its token's count (trusted)
MAX_CLAIM_BRANCHES = 32  # (kind, set, owner) index ranges one claim statement reads at most
MAX_LIST_SCANS = 8  # owners one claim statement reads when the worker fits too many sets

_b = sa.bindparam

# the state moves of the exchange, checked against the transition table at import
FINISH = task_move(TaskState.DONE, TaskState.LEASED)  # a result accepted
REQUEUE = task_move(TaskState.READY, TaskState.LEASED)  # failed, released, lost, left
UNBLOCK = task_move(TaskState.READY, TaskState.BLOCKED)  # its last dependency is done
LEASE = task_move(TaskState.LEASED, TaskState.READY)  # claimed
FAIL_LOST = task_move(TaskState.FAILED, TaskState.LEASED)  # lost past max_losses


def _ids() -> sa.BindParameter[Any]:
    """A list of ids bound at execution (one compiled statement for any length)."""
    return sa.bindparam("ids", expanding=True)

# ---------------------------------------------------------------- requirement sets


def canonical_requirements(requirements: Mapping[str, Any] | None) -> str | None:
    """Requirements as one canonical JSON text (no default values, tags sorted), or None
    for none; equal requirements give equal texts. Migration 0005 holds a copy."""
    if not requirements:
        return None
    kept = {k: v for k, v in requirements.items() if v not in (None, False, [], "")}
    if "tags" in kept:
        kept["tags"] = sorted(set(kept["tags"]))
    return json.dumps(kept, sort_keys=True, separators=(",", ":")) if kept else None


_sets_added = 0  # sets this process added: a claim's cache of sets re-reads when it grew


def sets_added() -> int:
    return _sets_added


def _digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()


def requirement_set_ids(conn: sa.Connection,
                        many: Sequence[Mapping[str, Any] | None]) -> list[int]:
    """The set id of each requirements dict (0 for none), adding the sets not seen yet."""
    canon = [canonical_requirements(r) for r in many]
    wanted = {_digest(c): c for c in canon if c is not None}
    global _sets_added
    ids = _set_ids_by_digest(conn, list(wanted))
    for digest in set(wanted) - set(ids):
        _sets_added += 1
        try:
            with conn.begin_nested():  # another coordinator may add the same set meanwhile
                matching.insert_set(conn, digest, json.loads(wanted[digest]))
        except sa.exc.IntegrityError:
            pass
    missing = [d for d in wanted if d not in ids]
    if missing:
        ids.update(_set_ids_by_digest(conn, missing))
    return [NO_REQUIREMENTS if c is None else ids[_digest(c)] for c in canon]


def _set_ids_by_digest(conn: sa.Connection, digests: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in _chunks(list(digests)):
        out.update((d, i) for d, i in conn.execute(
            sa.select(requirement_sets.c.digest, requirement_sets.c.id)
            .where(requirement_sets.c.digest.in_(part))))
    return out


def with_requirement_sets(conn: sa.Connection,
                          rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Task rows about to be inserted, each with its ``requirement_set_id``."""
    if all("requirement_set_id" in r for r in rows):
        return rows
    ids = requirement_set_ids(conn, [r.get("requirements") for r in rows])
    return [{**r, "requirement_set_id": i} for r, i in zip(rows, ids, strict=True)]


_SETS_AFTER = (sa.select(requirement_sets.c.id, requirement_sets.c.requirements)
               .where(requirement_sets.c.id > _b("after")).order_by(requirement_sets.c.id))


def requirement_sets_after(conn: sa.Connection, after_id: int) -> list[Row]:
    """Sets added after ``after_id`` (id, requirements), oldest first."""
    return list(conn.execute(_SETS_AFTER, {"after": after_id}))


# ---------------------------------------------------------------- the worker and what it holds

_TOUCH_LIVE = (workers.update()
               .where(workers.c.id == _b("w"), workers.c.left_at.is_(None),
                      workers.c.revoked_at.is_(None))
               .values(last_seen=_b("now"), tasks_done=workers.c.tasks_done + _b("done")))


def touch_live_worker(conn: sa.Connection, worker_id: int, now: float, done: int = 0) -> bool:
    """Note the worker was heard from and finished ``done`` more tasks; False (nothing
    changed) when it left or was revoked."""
    return conn.execute(_TOUCH_LIVE, {"w": worker_id, "now": now, "done": done}).rowcount > 0


_WORKER_DONE = (workers.update().where(workers.c.id == _b("w"))
                .values(tasks_done=workers.c.tasks_done + _b("n")))


def add_worker_done(conn: sa.Connection, worker_id: int, n: int) -> None:
    """Count finished tasks of a worker that has left (``touch_live_worker`` did not)."""
    if n:
        conn.execute(_WORKER_DONE, {"w": worker_id, "n": n})


_HELD_COLUMNS = (tasks.c.id, tasks.c.job_id, tasks.c.attempt, tasks.c.kind, tasks.c.idx,
                 tasks.c.name, tasks.c.failures, tasks.c.max_attempts, tasks.c.state,
                 tasks.c.losses, tasks.c.worker_id, tasks.c.requirement_set_id,
                 tasks.c.leased_at)
_HELD = (sa.select(*_HELD_COLUMNS)
         .where(tasks.c.worker_id == _b("w"), tasks.c.state == TaskState.LEASED)
         .order_by(tasks.c.id))
_HELD_LOCKED = _HELD.with_for_update()


def held_attempts(conn: sa.Connection, worker_id: int, *, lock: bool) -> list[Row]:
    """The attempts leased to the worker now; with ``lock`` (server databases) their rows
    stay locked to this transaction, so a cancel or the reaper waits for the sync."""
    return list(conn.execute(_HELD_LOCKED if lock else _HELD, {"w": worker_id}))


_STATES = (sa.select(tasks.c.id, tasks.c.attempt, tasks.c.state, tasks.c.worker_id)
           .where(tasks.c.id.in_(_ids())))


def attempt_states(conn: sa.Connection, task_ids: Sequence[int]) -> dict[int, Row]:
    """id -> (id, attempt, state, worker_id) of tasks, for the reasons of refusals."""
    out: dict[int, Row] = {}
    for part in _chunks(sorted(set(task_ids))):
        rows: list[Row] = list(conn.execute(_STATES, {"ids": list(part)}))
        out.update((row.id, row) for row in rows)
    return out


# ---------------------------------------------------------------- reports

# an attempt still held: the task, its attempt, this worker (and, in each move, leased)
_FENCE = sa.and_(tasks.c.id == _b("t"), tasks.c.attempt == _b("a"),
                 tasks.c.worker_id == _b("w"))
_COMPLETE = (tasks.update().where(_FENCE, FINISH.where)
             .values(**FINISH.values(result=_b("result", type_=sa.JSON), progress=1.0,
                                     finished_at=_b("now"), lease_expires_at=None,
                                     error=None)))
_PROGRESS = (tasks.update().where(_FENCE, tasks.c.state == TaskState.LEASED)
             .values(progress=sa.func.coalesce(_b("progress", type_=sa.Double),
                                               tasks.c.progress),
                     message=sa.func.coalesce(_b("message", type_=sa.String),
                                              tasks.c.message)))
_REQUEUE_FAILED = (tasks.update().where(_FENCE, REQUEUE.where)
                   .values(**REQUEUE.values(worker_id=None, lease_expires_at=None,
                                            progress=None, failures=tasks.c.failures + 1,
                                            error=_b("error"))))


def complete_attempts(conn: sa.Connection, worker_id: int, done: Sequence[tuple[int, int, Any]],
                      now: float) -> None:
    """(task, attempt, result) of attempts held by the worker -> done, in one executemany."""
    if done:
        conn.execute(_COMPLETE, [{"t": t, "a": a, "w": worker_id, "result": result, "now": now}
                                 for t, a, result in done])


def set_attempt_progress(conn: sa.Connection, worker_id: int,
                         running: Sequence[tuple[int, int, float | None, str | None]]) -> None:
    """(task, attempt, progress, message) of running attempts; None keeps the old value."""
    if running:
        conn.execute(_PROGRESS, [
            {"t": t, "a": a, "w": worker_id, "progress": p,
             "message": None if m is None else m[:1000]} for t, a, p, m in running])


def requeue_failed_attempts(conn: sa.Connection, worker_id: int,
                            failed: Sequence[tuple[int, int, str]]) -> None:
    """(task, attempt, error) -> ready for another attempt, one failure counted each."""
    if failed:
        conn.execute(_REQUEUE_FAILED, [{"t": t, "a": a, "w": worker_id, "error": e[:10_000]}
                                       for t, a, e in failed])


_HAND_BACK = (tasks.update().where(tasks.c.id.in_(_ids()), tasks.c.worker_id == _b("w"),
                                  REQUEUE.where)
              .values(**REQUEUE.values(worker_id=None, lease_expires_at=None, progress=None)))


def hand_back(conn: sa.Connection, worker_id: int, task_ids: Sequence[int]) -> int:
    """Leased tasks of the worker -> ready, no failure counted (released, lost on the way,
    or the worker leaving)."""
    changed = 0
    for part in _chunks(sorted(set(task_ids))):
        changed += conn.execute(_HAND_BACK, {"ids": list(part), "w": worker_id}).rowcount
    return changed


_LOSE = (tasks.update().where(tasks.c.id == _b("t"), tasks.c.attempt == _b("a"), REQUEUE.where)
         .values(**REQUEUE.values(worker_id=None, lease_expires_at=None, progress=None,
                                  losses=tasks.c.losses + 1)))
_FAIL_LOST = (tasks.update().where(tasks.c.id == _b("t"), tasks.c.attempt == _b("a"),
                                   FAIL_LOST.where)
              .values(**FAIL_LOST.values(losses=tasks.c.losses + 1, error=_b("error"),
                                         finished_at=_b("now"), lease_expires_at=None)))


def requeue_lost(conn: sa.Connection, lost: Sequence[tuple[int, int]]) -> None:
    """(task, attempt) of leases lost through no report of the task's (its worker
    vanished, left, was revoked or restarted) -> ready, one loss counted and no failure;
    fenced by the attempt, so a lease taken meanwhile is not touched."""
    if lost:
        conn.execute(_LOSE, [{"t": t, "a": a} for t, a in lost])


def fail_lost(conn: sa.Connection, task_id: int, attempt: int, error: str, now: float) -> bool:
    """A lease lost once too often -> the task fails (one more loss counted)."""
    return conn.execute(_FAIL_LOST, {"t": task_id, "a": attempt, "error": error[:10_000],
                                     "now": now}).rowcount > 0


_JOB_DONE = (jobs.update().where(jobs.c.id == _b("j"))
             .values(tasks_done=jobs.c.tasks_done + _b("n")))
_JOB_DONE_RETURNING = _JOB_DONE.returning(jobs.c.id, jobs.c.tasks_done, jobs.c.tasks_total)


def add_jobs_done(conn: sa.Connection, per_job: Mapping[int, int]) -> list[int]:
    """Add finished tasks to each job's count; returns the jobs that may be complete now
    (every one where the database cannot say: MariaDB has no UPDATE ... RETURNING)."""
    if not per_job:
        return []
    if not conn.dialect.update_returning:
        conn.execute(_JOB_DONE, [{"j": j, "n": n} for j, n in sorted(per_job.items())])
        return sorted(per_job)
    complete: list[int] = []
    for j, n in sorted(per_job.items()):
        for job_id, done, total in conn.execute(_JOB_DONE_RETURNING, {"j": j, "n": n}):
            if done >= total:
                complete.append(job_id)
    return complete


_DEPENDENTS = (sa.select(task_deps.c.task_id, task_deps.c.depends_on_id)
               .where(task_deps.c.depends_on_id.in_(_ids())))


def dependents_of(conn: sa.Connection, task_ids: Sequence[int]) -> list[tuple[int, int]]:
    """(dependent, dependency) pairs for these dependencies."""
    out: list[tuple[int, int]] = []
    for part in _chunks(sorted(set(task_ids))):
        out.extend((t, d) for t, d in conn.execute(_DEPENDENTS, {"ids": list(part)}))
    return out


_COUNT_DOWN = (tasks.update().where(tasks.c.id == _b("t"))
               .values(deps_left=tasks.c.deps_left - _b("n")))
_UNBLOCKED = (tasks.c.id.in_(_ids()), tasks.c.deps_left <= 0, UNBLOCK.where)
_UNBLOCKED_KINDS = sa.select(tasks.c.kind).where(*_UNBLOCKED)
_UNBLOCK = tasks.update().where(*_UNBLOCKED).values(**UNBLOCK.values())


def unblock(conn: sa.Connection, counts: Mapping[int, int]) -> dict[str, int]:
    """Count down ``deps_left`` of dependents (id -> deps done now); those with none left
    become ready. Returns how many became ready per kind."""
    if not counts:
        return {}
    conn.execute(_COUNT_DOWN, [{"t": t, "n": n} for t, n in sorted(counts.items())])
    ready: dict[str, int] = {}
    for part in _chunks(sorted(counts)):
        kinds = list(conn.execute(_UNBLOCKED_KINDS, {"ids": list(part)}).scalars())
        if kinds:
            conn.execute(_UNBLOCK, {"ids": list(part)})
        for kind in kinds:
            ready[kind] = ready.get(kind, 0) + 1
    return ready


_LOG_CHARS = (sa.select(task_logs.c.task_id,
                        sa.func.coalesce(sa.func.sum(sa.func.length(task_logs.c.line)), 0))
              .where(task_logs.c.task_id.in_(_ids())).group_by(task_logs.c.task_id))
_WITH_LINE = (sa.select(task_logs.c.task_id).distinct()
              .where(task_logs.c.task_id.in_(_ids()), task_logs.c.line == _b("line")))


def log_chars(conn: sa.Connection, task_ids: Sequence[int]) -> dict[int, int]:
    """Characters of log stored per task (all attempts), for the log limit."""
    out = {t: 0 for t in task_ids}
    for part in _chunks(sorted(set(task_ids))):
        out.update((t, int(n)) for t, n in conn.execute(_LOG_CHARS, {"ids": list(part)}))
    return out


def tasks_with_line(conn: sa.Connection, task_ids: Sequence[int], line: str) -> set[int]:
    """Those of ``task_ids`` whose log has ``line``."""
    found: set[int] = set()
    for part in _chunks(sorted(set(task_ids))):
        found.update(conn.execute(_WITH_LINE, {"ids": list(part), "line": line}).scalars())
    return found


def insert_logs(conn: sa.Connection, rows: Sequence[tuple[int, int, int, str]],
                now: float) -> None:
    """(job, task, attempt, line) rows, in one insert per chunk."""
    for part in _chunks(list(rows)):
        conn.execute(task_logs.insert(), [
            {"job_id": j, "task_id": t, "attempt": a, "at": now, "line": line}
            for j, t, a, line in part])


# ---------------------------------------------------------------- expiry and claims

_RENEW = (tasks.update().where(tasks.c.worker_id == _b("w"), tasks.c.state == TaskState.LEASED)
          .values(lease_expires_at=_b("expires")))


def renew_leases(conn: sa.Connection, worker_id: int, expires_at: float) -> int:
    """Every attempt the worker holds is its until ``expires_at`` (one heartbeat)."""
    return conn.execute(_RENEW, {"w": worker_id, "expires": expires_at}).rowcount


_CLAIM_COLUMNS = (tasks.c.id, tasks.c.job_id, tasks.c.kind, tasks.c.name, tasks.c.payload,
                  tasks.c.inputs, tasks.c.attempt, tasks.c.last_copy_attempt,
                  tasks.c.priority, tasks.c.affinity, tasks.c.failures,
                  tasks.c.requirement_set_id,
                  # read per row returned (not a join the plan could start from): a claim
                  # marks the job running only when it is not yet
                  sa.select(jobs.c.state).where(jobs.c.id == tasks.c.job_id)
                  .scalar_subquery().label("job_state"))


def _not_blocked() -> sa.ColumnElement[bool]:
    """The task's job has not failed on this worker ``threshold`` times, nor on the
    workers of its join token ``token_threshold`` times (per-job blocks; a new
    registration with the same token keeps the second)."""
    return sa.and_(
        ~sa.exists().where(worker_job_failures.c.worker_id == _b("w"),
                           worker_job_failures.c.job_id == tasks.c.job_id,
                           worker_job_failures.c.failures >= _b("threshold")),
        ~sa.exists().where(token_job_failures.c.join_token_id == _b("jt"),
                           token_job_failures.c.job_id == tasks.c.job_id,
                           token_job_failures.c.failures >= _b("token_threshold")))


def _ranked(i: int, column: str) -> sa.Label[int]:
    """A number bound per owner, carried through the union for the fair merge."""
    return sa.cast(_b(f"{column}{i}"), sa.Integer).label(column)


@functools.lru_cache(maxsize=256)
def _claim_statement(combos: int, owners: int, lock: bool) -> sa.Select:
    """Ready tasks in fair-share order (see ``claim_candidates``). One branch per (kind,
    set) index range and owner, each read in the owner's order (priority, job, task) up to
    the limit; ``combos`` 0: per owner one scan filtered by lists (past
    MAX_CLAIM_BRANCHES). The branches are merged by the k-th task of owner o ranking
    ``running(o) + k``, ties to the owner ranked first (``owner_rank``). ``lock`` takes the
    rows FOR UPDATE SKIP LOCKED; only a single statement can (a UNION cannot lock:
    ``claim_candidates`` locks after it)."""
    order = (tasks.c.priority.desc(), tasks.c.job_id, tasks.c.id)

    def branch(c: int | None, o: int) -> sa.Select:
        where = ((tasks.c.kind.in_(_b("kinds", expanding=True)),
                  tasks.c.requirement_set_id.in_(_b("sets", expanding=True)))
                 if c is None else
                 (tasks.c.kind == _b(f"k{c}"), tasks.c.requirement_set_id == _b(f"s{c}")))
        return (sa.select(*_CLAIM_COLUMNS, tasks.c.owner_id, _ranked(o, "running"),
                          _ranked(o, "owner_rank"))
                .where(tasks.c.state == TaskState.READY, *where,
                       tasks.c.owner_id == _b(f"o{o}"), _not_blocked())
                .order_by(*order).limit(_b("limit")))

    per_owner: list[int | None] = list(range(combos)) if combos else [None]
    if len(per_owner) * owners == 1:
        query = branch(per_owner[0], 0)
        return query.with_for_update(skip_locked=True) if lock else query
    parts = [branch(c, o).subquery(f"b{o}_{0 if c is None else c}")
             for o in range(owners) for c in per_owner]
    union = sa.union_all(*[sa.select(part) for part in parts]).subquery("c")
    nth = sa.func.row_number().over(  # k: the task's place in its owner's queue
        partition_by=union.c.owner_id,
        order_by=(union.c.priority.desc(), union.c.job_id, union.c.id)).label("nth")
    ranked = sa.select(union, nth).subquery("r")
    return (sa.select(ranked)
            .order_by(ranked.c.running + ranked.c.nth, ranked.c.owner_rank, ranked.c.nth)
            .limit(_b("limit")))


_LOCK_READY = (sa.select(tasks.c.id, tasks.c.attempt)
               .where(tasks.c.id.in_(_ids()),
                      tasks.c.state == TaskState.READY)
               .with_for_update(skip_locked=True))


def claim_candidates(conn: sa.Connection, *, worker_id: int, kinds: Sequence[str],
                     sets: Sequence[int], block_threshold: int, limit: int,
                     lock: bool, join_token_id: int | None = None,
                     token_threshold: int = 1) -> list[Row]:
    """Up to ``limit`` ready tasks of these kinds and requirement sets in fair-share order,
    skipping jobs the worker (or its ``join_token_id``) is blocked from. Fair share: the
    next task goes to the user holding the fewest leased tasks (``owner_queues``), each
    user's own queue by priority, then older job, then task order; ties to the user
    waiting longest. Owners are read ``MAX_CLAIM_BRANCHES`` branches at a time, those
    furthest below their share first, until ``limit`` are found. With ``lock`` the rows
    returned are locked to this transaction (others' claims skip them)."""
    combos = [(k, s) for k in sorted(set(kinds)) for s in sorted(set(sets))]
    if not combos or limit <= 0:
        return []
    queues = owner_queues(conn)
    params: dict[str, Any] = {"w": worker_id, "threshold": block_threshold, "limit": limit,
                              "jt": NO_TOKEN if join_token_id is None else join_token_id,
                              "token_threshold": token_threshold}
    branches = 0 if len(combos) > MAX_CLAIM_BRANCHES else len(combos)
    if branches == 0:
        params.update(kinds=sorted(set(kinds)), sets=sorted(set(sets)))
    for i, (k, s) in enumerate(combos[:branches]):
        params[f"k{i}"], params[f"s{i}"] = k, s
    per_batch = MAX_CLAIM_BRANCHES // branches if branches else MAX_LIST_SCANS
    found: list[Row] = []
    for start in range(0, len(queues), per_batch):
        batch = queues[start:start + per_batch]
        for j, queue in enumerate(batch):
            params[f"o{j}"], params[f"running{j}"] = queue.owner_id, queue.running
            params[f"owner_rank{j}"] = start + j
        params["limit"] = limit - len(found)
        found.extend(_claim_batch(conn, branches, len(batch), params, lock))
        if len(found) >= limit:
            break
    return found


def _claim_batch(conn: sa.Connection, branches: int, owners: int, params: dict[str, Any],
                 lock: bool) -> list[Row]:
    rows = list(conn.execute(_claim_statement(branches, owners, lock), params))
    if not lock or (branches or 1) * owners == 1 or not rows:
        return rows
    # read without locks through the union; lock what is still ready, skipping rows
    # another claim holds (it may take fewer than read: the next sync gets more)
    locked = {i: a for i, a in conn.execute(_LOCK_READY, {"ids": [r.id for r in rows]})}
    return [r for r in rows if locked.get(r.id) == r.attempt]


def next_attempt() -> sa.ColumnElement[int]:
    """The attempt number of a task's next lease, for an UPDATE of ``tasks``: one up from
    every number it used, its backup copies' included (``queries.copies``: a copy that
    ended while the attempt it backed up went on used a number above the task's)."""
    return sa.case((tasks.c.last_copy_attempt > tasks.c.attempt, tasks.c.last_copy_attempt),
                   else_=tasks.c.attempt) + 1


def next_attempt_of(row: Row) -> int:
    """``next_attempt`` for a row read with ``attempt`` and ``last_copy_attempt``."""
    return max(row.attempt, row.last_copy_attempt or 0) + 1


_LEASE = (tasks.update().where(tasks.c.id.in_(_ids()), LEASE.where)
          .values(**LEASE.values(attempt=next_attempt(), worker_id=_b("w"),
                                 lease_expires_at=_b("expires"), progress=None, message=None,
                                 started_at=sa.func.coalesce(tasks.c.started_at, _b("now")),
                                 leased_at=_b("now"))))


def lease_claimed(conn: sa.Connection, task_ids: Sequence[int], *, worker_id: int, now: float,
                  expires_at: float) -> int:
    """Claimed ready tasks -> leased to the worker under their next attempt."""
    changed = 0
    for part in _chunks(sorted(set(task_ids))):
        changed += conn.execute(_LEASE, {"ids": list(part), "w": worker_id, "now": now,
                                         "expires": expires_at}).rowcount
    return changed

