"""Jobs: submit (validate, plan, insert in one transaction), read, cancel, retry, and
finish (a completed job's kind makes its job-level outputs).

Users number a job's tasks 1..N, in plan order (``task_label``: task N is the one at
index N-1); ids stay internal. A job read here takes its task counts from the job's row
(counters kept exact in the database: migration 0006), so it costs the same for 10 tasks
or 100,000; it says how many of its items failed (sweeps) and whether retrying its failed
tasks could help, from one aggregate per list."""

from __future__ import annotations

import threading
import weakref

import sqlalchemy as sa
from pydantic import ValidationError

from parallel_pilot.coordinator.services import waiting
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.payloads import task_payloads
from parallel_pilot.core.protocol import JobInfo, JobSubmit, TaskInfo
from parallel_pilot.core.requirements import Requirements
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.errors import InvalidInput, JobNotFound, MissingBlob, TaskNotFound
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import FinishedTask, TaskSpec, describe_validation, parse_params
from parallel_pilot.kinds.sweep import SweepKind
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import tasks as task_queries

MAX_JOBS_LISTED = 500  # jobs one list request returns at most
ITEM_KINDS = (SweepKind.name,)  # kinds whose tasks are items that may fail as a result


class Caller:
    """Who is asking: a user id and whether they are an admin."""

    def __init__(self, user_id: int, name: str, is_admin: bool) -> None:
        self.user_id, self.name, self.is_admin = user_id, name, is_admin


IDEMPOTENCY_KEY_CHARS = 100  # characters an Idempotency-Key may have at most


def submit(svc: Services, caller: Caller, request: JobSubmit,
           idempotency_key: str | None = None) -> JobInfo:
    """Validate, plan and insert a job in one transaction. A submission carrying an
    ``idempotency_key`` the caller used before gets the job that key made (as it is now),
    never a second job: a client whose answer was lost sends the same key again."""
    if idempotency_key is not None:
        _check_key(idempotency_key)
        with svc.transaction() as conn:
            made = q.job_id_by_idempotency_key(conn, caller.user_id, idempotency_key)
            if made is not None:
                return job_info(conn, svc, made)
    try:
        return _submit(svc, caller, request, idempotency_key)
    except sa.exc.IntegrityError:
        if idempotency_key is None:
            raise
        with svc.transaction() as conn:  # the same key was submitted concurrently
            made = q.job_id_by_idempotency_key(conn, caller.user_id, idempotency_key)
            if made is None:
                raise
            return job_info(conn, svc, made)


def _check_key(key: str) -> None:
    if not key or len(key) > IDEMPOTENCY_KEY_CHARS or not key.isascii() \
            or not key.isprintable():
        raise InvalidInput(f"the Idempotency-Key header must be 1 to {IDEMPOTENCY_KEY_CHARS} "
                           "printable ASCII characters")


def _submit(svc: Services, caller: Caller, request: JobSubmit,
            idempotency_key: str | None) -> JobInfo:
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
            idempotency_key=idempotency_key,
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
    ready = sum(1 for spec in specs if not spec.depends_on)
    if ready:  # about one long poll woken per ready task, of workers running the kind
        svc.notifier.tasks_ready({kind.name: ready})
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
            raise InvalidInput(f"task {i + 1} depends on a task that is not planned before it")


def task_label(idx: int, name: str) -> str:
    """A task as users name it: its number in the job (1-based) and its name, e.g.
    ``task 3 (item 7)``; the same number the dashboard and ``pilot logs --task`` use."""
    return f"task {idx + 1} ({name})"


def _visible_job(conn: sa.Connection, caller: Caller, job_id: int) -> sa.Row:
    row = q.get_job(conn, job_id)
    # another user's job is "not found", so ids do not confirm that a job exists
    if row is None or (row.owner_id != caller.user_id and not caller.is_admin):
        raise JobNotFound(f"no job {job_id}")
    return row


class FailedItemsMemo:
    """Failed items per (job, tasks done), remembered per database: a done task never
    changes again (``done`` is final), so the count that goes with a number of done tasks
    is fixed. A finished job is counted once per process instead of at every read (the
    dashboard reads jobs every second; the aggregate parses each result)."""

    MAX_ENTRIES = 10_000  # jobs remembered per database; the oldest are forgotten first

    def __init__(self) -> None:
        self._by_engine: weakref.WeakKeyDictionary[sa.Engine, dict[int, tuple[int, int]]] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def counts(self, conn: sa.Connection, done: dict[int, int]) -> dict[int, int]:
        """Failed items of the jobs in ``done`` (job id -> its tasks done now)."""
        with self._lock:
            known = self._by_engine.setdefault(conn.engine, {})
            out = {j: known[j][1] for j, n in done.items() if known.get(j, (-1, 0))[0] == n}
        missing = [j for j in done if j not in out]
        if missing:
            fresh = q.failed_item_counts(conn, missing)
            with self._lock:
                for job_id in missing:
                    out[job_id] = fresh.get(job_id, 0)
                    known.pop(job_id, None)
                    known[job_id] = (done[job_id], out[job_id])
                while len(known) > self.MAX_ENTRIES:
                    known.pop(next(iter(known)))
        return out


FAILED_ITEMS = FailedItemsMemo()


class JobFacts:
    """What a job read needs besides its row and task counts, gathered in one aggregate
    per statement for a whole list of jobs: failed items (sweeps), final failures, and
    why a job waits on no worker (``services.waiting``)."""

    def __init__(self, conn: sa.Connection, rows: list[sa.Row],
                 counts: dict[int, dict[str, int]], svc: Services | None = None) -> None:
        done = {r.id: counts.get(r.id, {}).get(TaskState.DONE, 0) for r in rows
                if r.kind in ITEM_KINDS}
        failed = [r.id for r in rows if r.state == JobState.FAILED]
        self.failed_items = FAILED_ITEMS.counts(conn, {j: n for j, n in done.items() if n})
        self.failures = q.final_failure_counts(conn, failed) if failed else {}
        self.waiting = waiting.waiting_reasons(conn, svc, rows, counts) if svc else {}

    def items_failed(self, row: sa.Row) -> int | None:
        return self.failed_items.get(row.id, 0) if row.kind in ITEM_KINDS else None

    def retryable(self, row: sa.Row) -> bool:
        """False only for a failed job whose every failed task was final (its worker said
        retrying cannot help); a cancelled job, or one failed for want of attempts, can."""
        failures = self.failures.get(row.id)
        if row.state != JobState.FAILED or failures is None:
            return True
        return int(failures.final or 0) < int(failures.failed)


def job_info(conn: sa.Connection, svc: Services, job_id: int,
             row: sa.Row | None = None, counts: dict[str, int] | None = None,
             facts: JobFacts | None = None) -> JobInfo:
    row = row or q.get_job(conn, job_id)
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    counts = counts if counts is not None else q.job_task_counts(row)
    facts = facts or JobFacts(conn, [row], {job_id: counts}, svc)
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
        failed_items=facts.items_failed(row), retryable=facts.retryable(row),
        waiting_reason=facts.waiting.get(row.id),
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
        counts = {r.id: q.job_task_counts(r) for r in rows}
        facts = JobFacts(conn, rows, counts, svc)
        return [job_info(conn, svc, r.id, r, counts[r.id], facts) for r in rows]


def tasks(svc: Services, caller: Caller, job_id: int) -> list[TaskInfo]:
    with svc.transaction() as conn:
        _visible_job(conn, caller, job_id)
        return [
            TaskInfo(
                id=t.id, job_id=t.job_id, index=t.idx, name=t.name, kind=t.kind,
                state=TaskState(t.state), attempt=t.attempt, failures=t.failures,
                losses=t.losses,
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
         limit: int, task_number: int | None = None) -> list[sa.Row]:
    """Log lines of the job, or of one of its tasks: ``task_number`` is the task's number
    in the job (1-based, as users see it), ``task_id`` its id; a task the job does not
    have is ``TaskNotFound``, not an empty log."""
    with svc.transaction() as conn:
        row = _visible_job(conn, caller, job_id)
        if task_number is not None and task_id is not None:
            raise InvalidInput("give the task's number in the job (task) or its id "
                               "(task_id), not both")
        if task_number is not None:
            task_id = q.task_id_at(conn, job_id, task_number - 1) \
                if task_number <= row.tasks_total else None
            if task_id is None:
                raise TaskNotFound(f"job {job_id} has no task {task_number}: "
                                   f"{_numbers(row.tasks_total)}")
        elif task_id is not None:
            task = q.get_task(conn, task_id)
            if task is None or task.job_id != job_id:
                raise TaskNotFound(f"job {job_id} has no task with id {task_id}")
        return q.log_lines(conn, job_id=job_id, task_id=task_id, after_id=after_id, limit=limit)


def _numbers(total: int) -> str:
    return {0: "it has no tasks", 1: "it has only task 1"}.get(
        total, f"its tasks are numbered 1 to {total}")


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
            fresh = q.get_job(conn, job_id)
            assert fresh is not None
            if set(q.job_task_counts(fresh)) == {TaskState.CANCELLED}:
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
    done = [t for t in all_tasks if t.state == TaskState.DONE]
    finished = [FinishedTask(index=t.idx, name=t.name, payload=payload, result=t.result or {})
                for t, payload in zip(done, task_payloads(conn, done), strict=True)]
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
