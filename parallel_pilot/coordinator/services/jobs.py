"""Jobs: submit (validate, plan, insert in one transaction), read, cancel, retry, and
finish (a completed job's kind makes its job-level outputs)."""

from __future__ import annotations

import sqlalchemy as sa
from pydantic import ValidationError

from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.core.protocol import JobInfo, JobSubmit, TaskInfo
from parallel_pilot.core.requirements import Requirements
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.errors import InvalidInput, JobNotFound, MissingBlob, TaskNotFound
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import FinishedTask, TaskSpec, describe_validation, parse_params
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import tasks as task_queries

MAX_JOBS_LISTED = 500  # jobs one list request returns at most


class Caller:
    """Who is asking: a user id and whether they are an admin."""

    def __init__(self, user_id: int, name: str, is_admin: bool) -> None:
        self.user_id, self.name, self.is_admin = user_id, name, is_admin


def submit(svc: Services, caller: Caller, request: JobSubmit) -> JobInfo:
    kind = get_kind(request.kind)
    params = parse_params(kind, request.params)
    job_requirements = _requirements(request.requirements)
    needed = kind.input_blobs(params)
    with svc.transaction() as conn:
        missing = q.missing_blobs(conn, needed.values())
        if not caller.is_admin:
            # a blob the caller may not read is "missing" too: a name is not a capability,
            # and the answer does not confirm that another user's blob exists
            missing |= set(needed.values()) - q.blobs_readable_by_user(
                conn, caller.user_id, needed.values())
    if missing:
        names = sorted(n for n, sha in needed.items() if sha in missing)
        raise MissingBlob(
            f"these files have not been uploaded: {', '.join(names)}; upload each with "
            "PUT /api/v1/blobs/{sha256} first"
        )
    params = kind.check_inputs(params, svc.blobs.read_prefix)
    specs = kind.plan(params)
    _check_plan(specs, svc.settings.max_tasks_per_job)
    now = svc.clock()
    max_attempts = request.max_attempts or svc.settings.max_attempts
    with svc.transaction() as conn:
        job_id = q.insert_job(
            conn, owner_id=caller.user_id, name=request.name or f"{kind.name} job",
            kind=kind.name, params=params.model_dump(mode="json"), priority=request.priority,
            max_attempts=max_attempts, tasks_total=len(specs), now=now,
        )
        task_ids = q.insert_tasks(conn, job_id, [
            {"idx": i, "name": spec.name[:200], "kind": kind.name,
             "state": TaskState.BLOCKED if spec.depends_on else TaskState.READY,
             "priority": request.priority, "payload": spec.payload, "inputs": spec.inputs,
             "deps_left": len(spec.depends_on), "max_attempts": max_attempts,
             "requirements": {**job_requirements, **spec.requirements} or None,
             "quorum": spec.quorum, "deadline_seconds": spec.deadline_seconds,
             "affinity": spec.affinity}
            for i, spec in enumerate(specs)
        ])
        q.insert_task_deps(conn, [(task_ids[i], task_ids[d])
                                  for i, spec in enumerate(specs) for d in spec.depends_on])
        info = job_info(conn, svc, job_id)
    svc.notifier.notify()
    return info


def _requirements(raw: dict) -> dict:
    try:
        return Requirements.model_validate(raw).model_dump(exclude_defaults=True)
    except ValidationError as exc:
        raise InvalidInput(f"invalid requirements: {describe_validation(exc)}") from None


def _check_plan(specs: list[TaskSpec], max_tasks: int) -> None:
    if not specs:
        raise InvalidInput("the job has nothing to do (its plan has no tasks)")
    if len(specs) > max_tasks:
        raise InvalidInput(f"the job would have {len(specs)} tasks; at most "
                           f"{max_tasks} are allowed (max_tasks_per_job)")
    for i, spec in enumerate(specs):
        # dependencies point only backwards, so the graph has no cycle
        if any(not 0 <= d < i for d in spec.depends_on):
            raise InvalidInput(f"task {i} depends on a task that is not planned before it")


def _visible_job(conn: sa.Connection, caller: Caller, job_id: int) -> sa.Row:
    row = q.get_job(conn, job_id)
    # another user's job is "not found", so ids do not confirm that a job exists
    if row is None or (row.owner_id != caller.user_id and not caller.is_admin):
        raise JobNotFound(f"no job {job_id}")
    return row


def job_info(conn: sa.Connection, svc: Services, job_id: int,
             row: sa.Row | None = None, counts: dict[str, int] | None = None) -> JobInfo:
    row = row or q.get_job(conn, job_id)
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    counts = counts if counts is not None else q.task_counts(conn, [job_id])[job_id]
    running = q.running_stats(conn, job_id) if counts.get(TaskState.LEASED) else None
    total = max(row.tasks_total, 1)
    done = counts.get(TaskState.DONE, 0)
    progress = min(1.0, (done + (running.progress if running else 0.0)) / total)
    eta = None
    if row.started_at and not JobState(row.state).finished and progress > 0:
        elapsed = svc.clock() - row.started_at
        eta = max(0.0, elapsed / progress * (1 - progress))
    return JobInfo(
        id=row.id, name=row.name, kind=row.kind, state=JobState(row.state), owner=row.owner,
        priority=row.priority, params=row.params, created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at, error=row.error,
        tasks_total=row.tasks_total, tasks_done=done, task_counts=counts,
        progress=progress if row.state != JobState.COMPLETED else 1.0,
        active_workers=running.workers if running else 0, eta_seconds=eta,
    )


def get(svc: Services, caller: Caller, job_id: int) -> JobInfo:
    with svc.transaction() as conn:
        row = _visible_job(conn, caller, job_id)
        return job_info(conn, svc, job_id, row)


def list_jobs(svc: Services, caller: Caller, state: JobState | None,
              limit: int) -> list[JobInfo]:
    with svc.transaction() as conn:
        rows = q.list_jobs(conn, owner_id=None if caller.is_admin else caller.user_id,
                           state=state, limit=min(limit, MAX_JOBS_LISTED))
        counts = q.task_counts(conn, [r.id for r in rows])
        return [job_info(conn, svc, r.id, r, counts[r.id]) for r in rows]


def tasks(svc: Services, caller: Caller, job_id: int) -> list[TaskInfo]:
    with svc.transaction() as conn:
        _visible_job(conn, caller, job_id)
        return [
            TaskInfo(
                id=t.id, job_id=t.job_id, index=t.idx, name=t.name, kind=t.kind,
                state=TaskState(t.state), attempt=t.attempt, failures=t.failures,
                worker=t.worker_name if t.state == TaskState.LEASED else None,
                progress=t.progress, message=t.message, error=t.error, result=t.result,
                started_at=t.started_at, finished_at=t.finished_at,
            )
            for t in q.list_tasks(conn, job_id)
        ]


def outputs(svc: Services, caller: Caller, job_id: int) -> list[sa.Row]:
    """The job's results; a kind's working state (``internal_outputs``: path prefixes, e.g.
    a training job's per-round weights and deltas) is left out of the listing."""
    with svc.transaction() as conn:
        row = _visible_job(conn, caller, job_id)
        hidden = tuple(getattr(get_kind(row.kind), "internal_outputs", ()))
        return [r for r in q.job_outputs(conn, job_id)
                if not (hidden and r.path.startswith(hidden))]


def logs(svc: Services, caller: Caller, job_id: int, task_id: int | None, after_id: int,
         limit: int) -> list[sa.Row]:
    with svc.transaction() as conn:
        _visible_job(conn, caller, job_id)
        return q.log_lines(conn, job_id=job_id, task_id=task_id, after_id=after_id, limit=limit)


def cancel(svc: Services, caller: Caller, job_id: int) -> JobInfo:
    with svc.transaction() as conn:
        row = _visible_job(conn, caller, job_id)
        if not JobState(row.state).finished:
            now = svc.clock()
            q.set_job_state(conn, job_id, JobState.CANCELLED, now, error="cancelled by user")
            q.cancel_open_tasks(conn, job_id, now, "job cancelled")
        return job_info(conn, svc, job_id)


def cancel_tasks(svc: Services, caller: Caller, job_id: int,
                 task_ids: list[int]) -> tuple[list[int], JobInfo]:
    """Cancel some open tasks of a job (the SDK's cancelled futures); the rest go on.

    Cancelled tasks count as settled: when every other task is done the job completes
    (or is cancelled when no task was done). Tasks other tasks depend on are refused:
    their dependents could never run; cancel the whole job instead."""
    with svc.transaction() as conn:
        row = _visible_job(conn, caller, job_id)
        known = {t.id for t in task_queries.get_tasks(conn, task_ids) if t.job_id == job_id}
        unknown = sorted(set(task_ids) - known)
        if unknown:
            raise TaskNotFound(f"job {job_id} has no task(s) {_id_list(unknown)}")
        needed = task_queries.tasks_with_dependents(conn, task_ids)
        if needed:
            raise InvalidInput(f"other tasks depend on task(s) {_id_list(needed)}; cancel "
                               "the whole job instead")
        cancelled: list[int] = []
        if not JobState(row.state).finished:
            now = svc.clock()
            cancelled = task_queries.cancel_job_tasks(conn, job_id, task_ids, now,
                                                      "cancelled by user")
        if cancelled:
            q.add_job_done(conn, job_id, len(cancelled))  # settled, like a done task
            counts = q.task_counts(conn, [job_id])[job_id]
            if set(counts) == {TaskState.CANCELLED}:
                q.set_job_state(conn, job_id, JobState.CANCELLED, now,
                                error="every task was cancelled by the user")
            else:
                finish_if_complete(conn, svc, job_id)
        info = job_info(conn, svc, job_id)
    svc.notifier.notify()
    return cancelled, info


def _id_list(ids: list[int], shown: int = 10) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(str(i) for i in ids[:shown]) + more


def retry(svc: Services, caller: Caller, job_id: int) -> JobInfo:
    """Put a failed or cancelled job's unfinished tasks back in the queue."""
    with svc.transaction() as conn:
        row = _visible_job(conn, caller, job_id)
        if row.state not in (JobState.FAILED, JobState.CANCELLED):
            raise InvalidInput(f"job {job_id} is {row.state}; only a failed or cancelled job "
                               "can be retried")
        reopen = q.reopenable_tasks(conn, job_id)
        unmet = q.unmet_dependency_counts(conn, reopen)
        by_count: dict[int, list[int]] = {}
        for task_id in reopen:
            by_count.setdefault(unmet.get(task_id, 0), []).append(task_id)
        for count, ids in by_count.items():
            q.reopen_tasks(conn, ids, count)
        q.delete_job_level_outputs(conn, job_id)
        q.set_job_state(conn, job_id, JobState.QUEUED, svc.clock())
        info = job_info(conn, svc, job_id)
    svc.notifier.notify()
    return info


def finish_if_complete(conn: sa.Connection, svc: Services, job_id: int) -> None:
    """After a task is done: when no task is left open, the job completes and its kind
    makes the job-level outputs, in the same transaction."""
    row = q.get_job(conn, job_id)
    # tasks_done is counted up as tasks finish: no scan of the job's tasks per completion
    if row is None or JobState(row.state).finished or row.tasks_done < row.tasks_total:
        return
    all_tasks = q.list_tasks(conn, job_id)
    # tasks cancelled one by one (cancel_tasks) are settled; a failed task, or a cancel of
    # the whole job, decides the job's end elsewhere
    # (a task a quorum went on without is settled too, even failed)
    if any(t.state not in (TaskState.DONE, TaskState.CANCELLED) and not t.skipped
           for t in all_tasks):
        return
    kind = get_kind(row.kind)
    params = kind.params_model.model_validate(row.params)
    finished = [FinishedTask(index=t.idx, name=t.name, payload=t.payload, result=t.result or {})
                for t in all_tasks if t.state == TaskState.DONE]
    now = svc.clock()
    for path, content in kind.finalize(params, finished).items():
        sha = svc.blobs.write_bytes(content)
        q.insert_blob(conn, sha, len(content), now, user_id=row.owner_id, worker_id=None)
        q.insert_output(conn, job_id=job_id, task_id=None, attempt=0, path=path, sha256=sha,
                        size=len(content), now=now)
    q.set_job_state(conn, job_id, JobState.COMPLETED, now)


def fail_job(conn: sa.Connection, svc: Services, job_id: int, reason: str) -> None:
    now = svc.clock()
    if q.set_job_state(conn, job_id, JobState.FAILED, now, error=reason[:10_000]):
        q.cancel_open_tasks(conn, job_id, now, "job failed")
