"""Every SQL statement of Parallel Pilot, one named function each.

Functions take an open ``sa.Connection`` inside a transaction the caller owns. State
writes are conditional (``WHERE state IN (...)`` from the transition table, plus the
attempt number where a worker reports), so concurrent coordinators cannot double-apply
them; a function returns whether its row changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.states import JobState, TaskState, job_sources, task_sources
from parallel_pilot.store.tables import (
    api_tokens,
    blob_readers,
    blobs,
    jobs,
    join_tokens,
    task_deps,
    task_logs,
    task_outputs,
    tasks,
    users,
    worker_job_failures,
    workers,
)

Row = sa.Row[Any]  # rows are read by column name
CHUNK = 500  # ids per IN (...) list / rows per multi-row insert


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _states(states: Iterable[TaskState | JobState]) -> list[str]:
    return [str(s) for s in states]


# ---------------------------------------------------------------- users and tokens


def count_users(conn: sa.Connection) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one()


def insert_user(conn: sa.Connection, name: str, is_admin: bool, now: float) -> int:
    result = conn.execute(
        users.insert().values(name=name, is_admin=is_admin, disabled=False, created_at=now)
    )
    return _new_id(result)


def insert_api_token(conn: sa.Connection, user_id: int, token_hash: str, name: str,
                     now: float, expires_at: float | None = None) -> int:
    result = conn.execute(api_tokens.insert().values(
        user_id=user_id, token_hash=token_hash, name=name, created_at=now, expires_at=expires_at,
    ))
    return _new_id(result)


def user_by_token_hash(conn: sa.Connection, token_hash: str, now: float) -> Any:
    return conn.execute(
        sa.select(users.c.id, users.c.name, users.c.is_admin)
        .join(api_tokens, api_tokens.c.user_id == users.c.id)
        .where(api_tokens.c.token_hash == token_hash, api_tokens.c.revoked_at.is_(None),
               sa.or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > now),
               users.c.disabled.is_(False))
    ).first()


def insert_join_token(conn: sa.Connection, token_hash: str, name: str, now: float) -> int:
    result = conn.execute(
        join_tokens.insert().values(token_hash=token_hash, name=name, created_at=now)
    )
    return _new_id(result)


def valid_join_token(conn: sa.Connection, token_hash: str, now: float) -> Row | None:
    return conn.execute(
        sa.select(join_tokens.c.id).where(
            join_tokens.c.token_hash == token_hash, join_tokens.c.revoked_at.is_(None),
            sa.or_(join_tokens.c.expires_at.is_(None), join_tokens.c.expires_at > now),
            sa.or_(join_tokens.c.uses_left.is_(None), join_tokens.c.uses_left > 0),
        )
    ).first()


# ---------------------------------------------------------------- workers


def insert_worker(conn: sa.Connection, name: str, token_hash: str,
                  capabilities: dict[str, Any], now: float) -> int:
    result = conn.execute(workers.insert().values(
        name=name, token_hash=token_hash, capabilities=capabilities, created_at=now,
        last_seen=now, tasks_done=0,
    ))
    return _new_id(result)


def worker_by_token_hash(conn: sa.Connection, token_hash: str) -> Row | None:
    return conn.execute(
        sa.select(workers).where(workers.c.token_hash == token_hash,
                                 workers.c.revoked_at.is_(None))
    ).first()


def touch_worker(conn: sa.Connection, worker_id: int, now: float) -> None:
    conn.execute(workers.update().where(workers.c.id == worker_id)
                 .values(last_seen=now, left_at=None))


def mark_worker_left(conn: sa.Connection, worker_id: int, now: float) -> None:
    conn.execute(workers.update().where(workers.c.id == worker_id)
                 .values(last_seen=now, left_at=now))


def add_worker_done(conn: sa.Connection, worker_id: int) -> None:
    conn.execute(workers.update().where(workers.c.id == worker_id)
                 .values(tasks_done=workers.c.tasks_done + 1))


def list_workers(conn: sa.Connection) -> list[Row]:
    return list(conn.execute(sa.select(workers).order_by(workers.c.id)))


def leased_task_ids_by_worker(conn: sa.Connection) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for task_id, worker_id in conn.execute(
        sa.select(tasks.c.id, tasks.c.worker_id).where(tasks.c.state == TaskState.LEASED)
    ):
        out.setdefault(worker_id, []).append(task_id)
    return out


def record_worker_failure(conn: sa.Connection, worker_id: int, job_id: int) -> None:
    where = (worker_job_failures.c.worker_id == worker_id) & (
        worker_job_failures.c.job_id == job_id)
    changed = conn.execute(worker_job_failures.update().where(where)
                           .values(failures=worker_job_failures.c.failures + 1)).rowcount
    if not changed:
        conn.execute(worker_job_failures.insert().values(
            worker_id=worker_id, job_id=job_id, failures=1))


def jobs_blocking_worker(conn: sa.Connection, worker_id: int, threshold: int) -> list[int]:
    return list(conn.execute(
        sa.select(worker_job_failures.c.job_id).where(
            worker_job_failures.c.worker_id == worker_id,
            worker_job_failures.c.failures >= threshold)
    ).scalars())


# ---------------------------------------------------------------- blobs


def insert_blob(conn: sa.Connection, sha256: str, size: int, now: float,
                user_id: int | None, worker_id: int | None) -> None:
    exists = conn.execute(sa.select(blobs.c.sha256).where(blobs.c.sha256 == sha256)).first()
    if not exists:
        conn.execute(blobs.insert().values(sha256=sha256, size=size, created_at=now,
                                           user_id=user_id, worker_id=worker_id))


def blob_size(conn: sa.Connection, sha256: str) -> int | None:
    return conn.execute(sa.select(blobs.c.size).where(blobs.c.sha256 == sha256)).scalar()


def missing_blobs(conn: sa.Connection, shas: Iterable[str]) -> set[str]:
    wanted = sorted(set(shas))
    found: set[str] = set()
    for part in _chunks(wanted):
        found.update(conn.execute(
            sa.select(blobs.c.sha256).where(blobs.c.sha256.in_(part))).scalars())
    return set(wanted) - found


# ---------------------------------------------------------------- jobs


def insert_job(conn: sa.Connection, *, owner_id: int, name: str, kind: str,
               params: dict[str, Any], priority: int, max_attempts: int, tasks_total: int,
               now: float) -> int:
    result = conn.execute(jobs.insert().values(
        owner_id=owner_id, name=name, kind=kind, params=params, state=JobState.QUEUED,
        priority=priority, max_attempts=max_attempts, created_at=now, tasks_total=tasks_total,
        tasks_done=0,
    ))
    return _new_id(result)


_JOB_COLUMNS = [*jobs.c, users.c.name.label("owner")]


def get_job(conn: sa.Connection, job_id: int) -> Row | None:
    return conn.execute(
        sa.select(*_JOB_COLUMNS).join(users, users.c.id == jobs.c.owner_id)
        .where(jobs.c.id == job_id)
    ).first()


def list_jobs(conn: sa.Connection, *, owner_id: int | None, state: str | None,
              limit: int) -> list[Row]:
    query = sa.select(*_JOB_COLUMNS).join(users, users.c.id == jobs.c.owner_id)
    if owner_id is not None:
        query = query.where(jobs.c.owner_id == owner_id)
    if state is not None:
        query = query.where(jobs.c.state == state)
    return list(conn.execute(query.order_by(jobs.c.id.desc()).limit(limit)))


def set_job_state(conn: sa.Connection, job_id: int, target: JobState, now: float,
                  error: str | None = None) -> bool:
    values: dict[str, Any] = {"state": target}
    if target.finished:
        values.update(finished_at=now, error=error)
    elif target == JobState.QUEUED:
        values.update(finished_at=None, error=None)
    return bool(conn.execute(
        jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_(_states(job_sources(target))))
        .values(**values)
    ).rowcount)


def mark_job_running(conn: sa.Connection, job_ids: Iterable[int], now: float) -> None:
    ids = sorted(set(job_ids))
    if ids:
        conn.execute(
            jobs.update().where(jobs.c.id.in_(ids), jobs.c.state == JobState.QUEUED)
            .values(state=JobState.RUNNING,
                    started_at=sa.func.coalesce(jobs.c.started_at, now))
        )


def add_job_done(conn: sa.Connection, job_id: int, delta: int = 1) -> None:
    conn.execute(jobs.update().where(jobs.c.id == job_id)
                 .values(tasks_done=jobs.c.tasks_done + delta))


def task_counts(conn: sa.Connection, job_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {j: {} for j in job_ids}
    for part in _chunks(list(job_ids)):
        for job_id, state, n in conn.execute(
            sa.select(tasks.c.job_id, tasks.c.state, sa.func.count())
            .where(tasks.c.job_id.in_(part)).group_by(tasks.c.job_id, tasks.c.state)
        ):
            out[job_id][state] = n
    return out


def running_stats(conn: sa.Connection, job_id: int) -> Row:
    """Active workers and summed progress of a job's leased tasks."""
    return conn.execute(
        sa.select(sa.func.count(sa.distinct(tasks.c.worker_id)).label("workers"),
                  sa.func.coalesce(sa.func.sum(tasks.c.progress), 0.0).label("progress"))
        .where(tasks.c.job_id == job_id, tasks.c.state == TaskState.LEASED)
    ).one()


# ---------------------------------------------------------------- tasks


def insert_tasks(conn: sa.Connection, job_id: int, rows: list[dict[str, Any]]) -> list[int]:
    """Insert a job's tasks (each dict: idx, name, kind, state, priority, payload, inputs,
    deps_left, max_attempts); returns their ids in ``idx`` order."""
    for part in _chunks(rows):
        conn.execute(tasks.insert(), [
            {**r, "job_id": job_id, "attempt": 0, "failures": 0} for r in part])
    return list(conn.execute(
        sa.select(tasks.c.id).where(tasks.c.job_id == job_id).order_by(tasks.c.idx)
    ).scalars())


def insert_task_deps(conn: sa.Connection, pairs: list[tuple[int, int]]) -> None:
    for part in _chunks(pairs):
        conn.execute(task_deps.insert(),
                     [{"task_id": t, "depends_on_id": d} for t, d in part])


def get_task(conn: sa.Connection, task_id: int) -> Row | None:
    return conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()


def get_tasks(conn: sa.Connection, task_ids: Sequence[int]) -> list[Row]:
    out: list[Row] = []
    for part in _chunks(list(task_ids)):
        out.extend(conn.execute(sa.select(tasks).where(tasks.c.id.in_(part))))
    return sorted(out, key=lambda r: r.id)


def list_tasks(conn: sa.Connection, job_id: int) -> list[Row]:
    return list(conn.execute(
        sa.select(tasks, workers.c.name.label("worker_name"))
        .outerjoin(workers, workers.c.id == tasks.c.worker_id)
        .where(tasks.c.job_id == job_id).order_by(tasks.c.idx)
    ))


def claimable_tasks(conn: sa.Connection, *, kinds: Sequence[str], exclude_jobs: Sequence[int],
                    limit: int, lock: bool) -> list[Row]:
    """Ready tasks (id, requirements) of the given kinds, best first; with ``lock``
    (PostgreSQL, MariaDB) the rows are locked with ``FOR UPDATE SKIP LOCKED`` so concurrent
    claims pass each other by. SQLite has no row locks: there the caller's
    ``BEGIN IMMEDIATE`` serialises claims."""
    query = (sa.select(tasks.c.id, tasks.c.requirements)
             .where(tasks.c.state == TaskState.READY, tasks.c.kind.in_(list(kinds)))
             .order_by(tasks.c.priority.desc(), tasks.c.id).limit(limit))
    if exclude_jobs:
        query = query.where(tasks.c.job_id.not_in(list(exclude_jobs)))
    if lock:
        query = query.with_for_update(skip_locked=True)
    return list(conn.execute(query))


def lease_tasks(conn: sa.Connection, task_ids: Sequence[int], *, worker_id: int, now: float,
                expires_at: float) -> list[Row]:
    """Move ready tasks to leased under a new attempt; returns the rows actually leased."""
    if not task_ids:
        return []
    conn.execute(
        tasks.update().where(tasks.c.id.in_(list(task_ids)), tasks.c.state == TaskState.READY)
        .values(state=TaskState.LEASED, attempt=tasks.c.attempt + 1, worker_id=worker_id,
                lease_expires_at=expires_at, progress=None, message=None,
                started_at=sa.func.coalesce(tasks.c.started_at, now))
    )
    return [r for r in get_tasks(conn, task_ids)
            if r.state == TaskState.LEASED and r.worker_id == worker_id]


def _held(task_id: int, attempt: int, worker_id: int) -> sa.ColumnElement[bool]:
    return sa.and_(tasks.c.id == task_id, tasks.c.attempt == attempt,
                   tasks.c.worker_id == worker_id, tasks.c.state == TaskState.LEASED)


def extend_lease(conn: sa.Connection, task_id: int, attempt: int, worker_id: int,
                 expires_at: float, progress: float | None, message: str | None) -> bool:
    values: dict[str, Any] = {"lease_expires_at": expires_at}
    if progress is not None:
        values["progress"] = progress
    if message is not None:
        values["message"] = message[:1000]
    return bool(conn.execute(
        tasks.update().where(_held(task_id, attempt, worker_id)).values(**values)).rowcount)


def complete_task(conn: sa.Connection, task_id: int, attempt: int, worker_id: int,
                  result: dict[str, Any], now: float) -> bool:
    return bool(conn.execute(
        tasks.update().where(_held(task_id, attempt, worker_id))
        .values(state=TaskState.DONE, result=result, progress=1.0, finished_at=now,
                lease_expires_at=None, error=None)
    ).rowcount)


def requeue_task(conn: sa.Connection, task_id: int, attempt: int, *, count_failure: bool,
                 error: str | None) -> bool:
    """leased -> ready for another attempt (optionally counting a failure)."""
    values: dict[str, Any] = {"state": TaskState.READY, "worker_id": None,
                              "lease_expires_at": None, "progress": None}
    if count_failure:
        values["failures"] = tasks.c.failures + 1
    if error is not None:
        values["error"] = error
    return bool(conn.execute(
        tasks.update().where(tasks.c.id == task_id, tasks.c.attempt == attempt,
                             tasks.c.state == TaskState.LEASED).values(**values)
    ).rowcount)


def fail_task(conn: sa.Connection, task_id: int, attempt: int, error: str, now: float) -> bool:
    """leased -> failed for good."""
    return bool(conn.execute(
        tasks.update().where(tasks.c.id == task_id, tasks.c.attempt == attempt,
                             tasks.c.state == TaskState.LEASED)
        .values(state=TaskState.FAILED, failures=tasks.c.failures + 1, error=error,
                finished_at=now, lease_expires_at=None)
    ).rowcount)


def extend_all_leases(conn: sa.Connection, expires_at: float) -> int:
    """Give every held lease until at least ``expires_at`` (a coordinator restart)."""
    return conn.execute(
        tasks.update().where(tasks.c.state == TaskState.LEASED,
                             tasks.c.lease_expires_at < expires_at)
        .values(lease_expires_at=expires_at)
    ).rowcount


def expired_leases(conn: sa.Connection, now: float, limit: int) -> list[Row]:
    return list(conn.execute(
        sa.select(tasks.c.id, tasks.c.job_id, tasks.c.attempt, tasks.c.failures,
                  tasks.c.max_attempts, tasks.c.worker_id)
        .where(tasks.c.state == TaskState.LEASED, tasks.c.lease_expires_at < now)
        .order_by(tasks.c.lease_expires_at).limit(limit)
    ))


def unblock_dependents(conn: sa.Connection, task_id: int) -> None:
    """One dependency of each dependent of ``task_id`` is done: count it down and make
    ready the dependents with none left."""
    dependents = list(conn.execute(
        sa.select(task_deps.c.task_id).where(task_deps.c.depends_on_id == task_id)).scalars())
    if not dependents:
        return
    conn.execute(tasks.update().where(tasks.c.id.in_(dependents))
                 .values(deps_left=tasks.c.deps_left - 1))
    conn.execute(
        tasks.update().where(tasks.c.id.in_(dependents), tasks.c.deps_left <= 0,
                             tasks.c.state == TaskState.BLOCKED)
        .values(state=TaskState.READY)
    )


def cancel_open_tasks(conn: sa.Connection, job_id: int, now: float, reason: str) -> int:
    """Every task of the job not yet finished -> cancelled (a leased one's worker is told
    to stop at its next heartbeat)."""
    return conn.execute(
        tasks.update().where(tasks.c.job_id == job_id,
                             tasks.c.state.in_(_states(task_sources(TaskState.CANCELLED))))
        .values(state=TaskState.CANCELLED, finished_at=now, lease_expires_at=None,
                error=sa.func.coalesce(tasks.c.error, reason))
    ).rowcount


def reopenable_tasks(conn: sa.Connection, job_id: int) -> list[int]:
    return list(conn.execute(
        sa.select(tasks.c.id).where(tasks.c.job_id == job_id,
                                    tasks.c.state.in_([TaskState.FAILED, TaskState.CANCELLED]))
    ).scalars())


def unmet_dependency_counts(conn: sa.Connection, task_ids: Sequence[int]) -> dict[int, int]:
    dep = tasks.alias("dep")
    out: dict[int, int] = {}
    for part in _chunks(list(task_ids)):
        for task_id, unmet in conn.execute(
            sa.select(task_deps.c.task_id, sa.func.count())
            .join(dep, dep.c.id == task_deps.c.depends_on_id)
            .where(task_deps.c.task_id.in_(part), dep.c.state != TaskState.DONE)
            .group_by(task_deps.c.task_id)
        ):
            out[task_id] = unmet
    return out


def reopen_tasks(conn: sa.Connection, task_ids: Sequence[int], deps_left: int) -> None:
    """Retry: failed or cancelled tasks go back to ready (no unmet dependencies) or blocked."""
    target = TaskState.READY if deps_left == 0 else TaskState.BLOCKED
    for part in _chunks(list(task_ids)):
        conn.execute(
            tasks.update().where(tasks.c.id.in_(part),
                                 tasks.c.state.in_(_states(task_sources(target))))
            .values(state=target, failures=0, error=None, finished_at=None, worker_id=None,
                    progress=None, deps_left=deps_left)
        )


def insert_output(conn: sa.Connection, *, job_id: int, task_id: int | None, attempt: int,
                  path: str, sha256: str, size: int, now: float) -> None:
    conn.execute(task_outputs.insert().values(
        job_id=job_id, task_id=task_id, attempt=attempt, path=path, sha256=sha256, size=size,
        created_at=now,
    ))


def delete_job_level_outputs(conn: sa.Connection, job_id: int) -> None:
    conn.execute(task_outputs.delete().where(task_outputs.c.job_id == job_id,
                                             task_outputs.c.task_id.is_(None)))


def job_outputs(conn: sa.Connection, job_id: int) -> list[Row]:
    """Job-level outputs, and outputs of finished tasks from the attempt that finished them
    (or, while a task runs, of its current attempt)."""
    return list(conn.execute(
        sa.select(task_outputs.c.path, task_outputs.c.sha256, task_outputs.c.size,
                  task_outputs.c.task_id)
        .outerjoin(tasks, tasks.c.id == task_outputs.c.task_id)
        .where(task_outputs.c.job_id == job_id,
               sa.or_(task_outputs.c.task_id.is_(None),
                      task_outputs.c.attempt == tasks.c.attempt))
        .order_by(task_outputs.c.path, task_outputs.c.id)
    ))


def job_has_output_blob(conn: sa.Connection, job_id: int, sha256: str) -> bool:
    return conn.execute(
        sa.select(task_outputs.c.id).where(task_outputs.c.job_id == job_id,
                                           task_outputs.c.sha256 == sha256).limit(1)
    ).first() is not None


def insert_log_lines(conn: sa.Connection, *, job_id: int, task_id: int, attempt: int,
                     lines: Sequence[str], now: float) -> None:
    if lines:
        for part in _chunks(list(lines)):
            conn.execute(task_logs.insert(), [
                {"job_id": job_id, "task_id": task_id, "attempt": attempt, "at": now,
                 "line": line} for line in part])


def log_lines(conn: sa.Connection, *, job_id: int, task_id: int | None, after_id: int,
              limit: int) -> list[Row]:
    query = sa.select(task_logs).where(task_logs.c.job_id == job_id, task_logs.c.id > after_id)
    if task_id is not None:
        query = query.where(task_logs.c.task_id == task_id)
    return list(conn.execute(query.order_by(task_logs.c.id).limit(limit)))


# ---------------------------------------------------------------- accounts (users, API
# tokens, join tokens, worker revocation)


def user_by_name(conn: sa.Connection, name: str) -> Row | None:
    return conn.execute(sa.select(users).where(users.c.name == name)).first()


def set_password_hash(conn: sa.Connection, user_id: int, password_hash: str) -> bool:
    return bool(conn.execute(users.update().where(users.c.id == user_id)
                             .values(password_hash=password_hash)).rowcount)


def list_users(conn: sa.Connection) -> list[Row]:
    return list(conn.execute(
        sa.select(users.c.id, users.c.name, users.c.is_admin, users.c.disabled,
                  users.c.created_at).order_by(users.c.id)))


def disable_user(conn: sa.Connection, user_id: int) -> bool:
    return bool(conn.execute(users.update().where(users.c.id == user_id)
                             .values(disabled=True)).rowcount)


def list_api_tokens(conn: sa.Connection, user_id: int) -> list[Row]:
    """The user's tokens that are not revoked (expired ones included, marked by expires_at)."""
    return list(conn.execute(
        sa.select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.created_at,
                  api_tokens.c.expires_at)
        .where(api_tokens.c.user_id == user_id, api_tokens.c.revoked_at.is_(None))
        .order_by(api_tokens.c.id)))


def revoke_api_token(conn: sa.Connection, token_id: int, user_id: int, now: float) -> bool:
    return bool(conn.execute(
        api_tokens.update().where(api_tokens.c.id == token_id,
                                  api_tokens.c.user_id == user_id,
                                  api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)).rowcount)


def insert_limited_join_token(conn: sa.Connection, token_hash: str, name: str, now: float,
                              uses_left: int | None, expires_at: float | None) -> int:
    result = conn.execute(join_tokens.insert().values(
        token_hash=token_hash, name=name, created_at=now, uses_left=uses_left,
        expires_at=expires_at))
    return _new_id(result)


def join_token_by_hash(conn: sa.Connection, token_hash: str) -> Row | None:
    """The join token whatever its state (the caller says why an unusable one is refused)."""
    return conn.execute(sa.select(join_tokens).where(join_tokens.c.token_hash == token_hash)
                        ).first()


def use_join_token(conn: sa.Connection, token_id: int, now: float) -> bool:
    """Count one use of a join token; False if it was revoked, expired or used up meanwhile."""
    return bool(conn.execute(
        join_tokens.update().where(
            join_tokens.c.id == token_id, join_tokens.c.revoked_at.is_(None),
            sa.or_(join_tokens.c.expires_at.is_(None), join_tokens.c.expires_at > now),
            sa.or_(join_tokens.c.uses_left.is_(None), join_tokens.c.uses_left > 0))
        .values(uses_left=sa.case((join_tokens.c.uses_left.is_(None), None),
                                  else_=join_tokens.c.uses_left - 1))
    ).rowcount)


def list_join_tokens(conn: sa.Connection) -> list[Row]:
    return list(conn.execute(
        sa.select(join_tokens.c.id, join_tokens.c.name, join_tokens.c.created_at,
                  join_tokens.c.expires_at, join_tokens.c.uses_left, join_tokens.c.revoked_at)
        .order_by(join_tokens.c.id)))


def revoke_join_token(conn: sa.Connection, token_id: int, now: float) -> bool:
    return bool(conn.execute(
        join_tokens.update().where(join_tokens.c.id == token_id,
                                   join_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)).rowcount)


def get_worker(conn: sa.Connection, worker_id: int) -> Row | None:
    return conn.execute(sa.select(workers).where(workers.c.id == worker_id)).first()


def revoke_worker(conn: sa.Connection, worker_id: int, now: float) -> bool:
    return bool(conn.execute(
        workers.update().where(workers.c.id == worker_id, workers.c.revoked_at.is_(None))
        .values(revoked_at=now)).rowcount)


def leased_tasks_of_worker(conn: sa.Connection, worker_id: int) -> list[Row]:
    return list(conn.execute(
        sa.select(tasks.c.id, tasks.c.job_id, tasks.c.attempt)
        .where(tasks.c.worker_id == worker_id, tasks.c.state == TaskState.LEASED)
        .order_by(tasks.c.id)))


# ---------------------------------------------------------------- isolation and limits


def _names_blob(column: sa.ColumnElement[Any], sha256: str) -> sa.ColumnElement[bool]:
    """Whether a JSON column's text mentions ``sha256`` (a validated 64-hex name, so it
    carries no LIKE wildcards); one portable test across SQLite, PostgreSQL and MariaDB."""
    return sa.cast(column, sa.Text).contains(sha256)


def blob_uploaded_by_user(conn: sa.Connection, user_id: int, sha256: str) -> bool:
    """Whether the user uploaded these bytes (any upload, not only the first)."""
    return conn.execute(
        sa.select(blob_readers.c.sha256).where(blob_readers.c.sha256 == sha256,
                                               blob_readers.c.user_id == user_id)
    ).first() is not None


def blob_is_output_of_users_job(conn: sa.Connection, user_id: int, sha256: str) -> bool:
    return conn.execute(
        sa.select(task_outputs.c.id).join(jobs, jobs.c.id == task_outputs.c.job_id)
        .where(task_outputs.c.sha256 == sha256, jobs.c.owner_id == user_id).limit(1)
    ).first() is not None


def blob_is_input_of_users_job(conn: sa.Connection, user_id: int, sha256: str) -> bool:
    return conn.execute(
        sa.select(tasks.c.id).join(jobs, jobs.c.id == tasks.c.job_id)
        .where(jobs.c.owner_id == user_id, _names_blob(tasks.c.inputs, sha256)).limit(1)
    ).first() is not None


def blob_uploaded_by_worker(conn: sa.Connection, worker_id: int, sha256: str) -> bool:
    return conn.execute(
        sa.select(blobs.c.sha256).where(blobs.c.sha256 == sha256,
                                        blobs.c.worker_id == worker_id)
    ).first() is not None


def blob_is_input_of_held_task(conn: sa.Connection, worker_id: int, sha256: str) -> bool:
    return conn.execute(
        sa.select(tasks.c.id).where(tasks.c.worker_id == worker_id,
                                    tasks.c.state == TaskState.LEASED,
                                    _names_blob(tasks.c.inputs, sha256)).limit(1)
    ).first() is not None


def blob_is_output_of_held_tasks_job(conn: sa.Connection, worker_id: int, sha256: str) -> bool:
    """An output of the job of a task the worker holds (an assembly step reads frames)."""
    held_jobs = sa.select(tasks.c.job_id).where(tasks.c.worker_id == worker_id,
                                                tasks.c.state == TaskState.LEASED)
    return conn.execute(
        sa.select(task_outputs.c.id).where(task_outputs.c.sha256 == sha256,
                                           task_outputs.c.job_id.in_(held_jobs)).limit(1)
    ).first() is not None


def task_log_chars(conn: sa.Connection, task_id: int) -> int:
    """Characters of log stored for a task, all attempts together."""
    return int(conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(task_logs.c.line)), 0))
        .where(task_logs.c.task_id == task_id)
    ).scalar_one())


def task_log_has_line(conn: sa.Connection, task_id: int, line: str) -> bool:
    return conn.execute(
        sa.select(task_logs.c.id).where(task_logs.c.task_id == task_id,
                                        task_logs.c.line == line).limit(1)
    ).first() is not None


# ---------------------------------------------------------------- web sessions


def revoke_api_token_by_hash(conn: sa.Connection, token_hash: str, now: float) -> bool:
    """Revoke the API token with this hash (a web session ending at logout)."""
    return bool(conn.execute(
        api_tokens.update().where(api_tokens.c.token_hash == token_hash,
                                  api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)).rowcount)


# ---------------------------------------------------------------- blob readers


def add_blob_reader(conn: sa.Connection, sha256: str, user_id: int) -> None:
    """Record that ``user_id`` may read the blob (they uploaded its bytes); idempotent."""
    exists = conn.execute(
        sa.select(blob_readers.c.sha256).where(blob_readers.c.sha256 == sha256,
                                               blob_readers.c.user_id == user_id)
    ).first()
    if not exists:
        conn.execute(blob_readers.insert().values(sha256=sha256, user_id=user_id))


def blobs_readable_by_user(conn: sa.Connection, user_id: int, shas: Iterable[str]) -> set[str]:
    """Of ``shas``, those the user may name as a job's input: blobs they uploaded and
    outputs of their own jobs."""
    wanted = sorted(set(shas))
    found: set[str] = set()
    for part in _chunks(wanted):
        found.update(conn.execute(
            sa.select(blob_readers.c.sha256).where(blob_readers.c.user_id == user_id,
                                                   blob_readers.c.sha256.in_(part))).scalars())
        found.update(conn.execute(
            sa.select(task_outputs.c.sha256).join(jobs, jobs.c.id == task_outputs.c.job_id)
            .where(jobs.c.owner_id == user_id, task_outputs.c.sha256.in_(part))).scalars())
    return found
