"""The stream of a job's finished tasks, with their results, as they finish:
``GET /api/v1/jobs/{id}/events?tasks=finished[&since=T]`` (the SDK's ``Executor`` follows
its jobs through it instead of polling them).

Events: ``job`` (``{"state", "error"}``) first and whenever the job's state changes;
``tasks`` (``{"tasks": [TaskInfo, ...], "since": T}``) with the tasks that finished since
the last event, each once; ``done`` once the job has finished and every finished task was
sent; ``gone`` when the job is not (or no longer) the caller's. Reopening with the last
``since`` sends again only what finished shortly before it (``OVERLAP_SECONDS``: commits
can land out of their timestamps' order), so a client that dropped the stream catches up
without reading the whole job.

The stream looks at the job's row (state, error, done count: a primary-key read) every
few milliseconds while the job changes, less often as it stays quiet, and reads tasks only
when that row moved (or every ``RECHECK_SECONDS``, for failures and cancels that leave
the done count alone): the cost of a look does not grow with the job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.sse import HEADERS, PING_SECONDS, RETRY_MS, sse_event
from parallel_pilot.core.protocol import TaskInfo
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.errors import JobNotFound, PilotError
from parallel_pilot.store.queries import task_stream as q

POLL_MIN = 0.002  # seconds between looks at a job that just changed
POLL_MAX = 0.25  # seconds between looks at a quiet job at most
POLL_SHARE = 0.05  # the pause grows as this share of how long the job has been quiet
RECHECK_SECONDS = 1.0  # tasks are read this often even when the job's row did not move
OVERLAP_SECONDS = 2.0  # finished tasks are read again this far behind the newest one sent
DISCONNECT_CHECK_SECONDS = 0.1  # how often a stream asks whether its client went away


@dataclass
class _Follow:
    """What one stream has sent: the job's row as last seen, the tasks sent lately."""

    since: float | None
    marker: tuple[Any, ...] | None = None
    state: str | None = None
    sent: dict[int, float] = field(default_factory=dict)  # task id -> finished_at
    scanned_at: float = float("-inf")


def _task_info(t: sa.Row) -> dict[str, Any]:
    return TaskInfo(
        id=t.id, job_id=t.job_id, index=t.idx, name=t.name, kind=t.kind,
        state=TaskState(t.state), attempt=t.attempt, failures=t.failures,
        worker=t.worker_name if t.state == TaskState.LEASED else None,
        progress=t.progress, message=t.message, error=t.error, result=t.result,
        started_at=t.started_at, finished_at=t.finished_at,
    ).model_dump(mode="json")


def _visible(conn: sa.Connection, caller: Caller, job_id: int) -> sa.Row:
    row = q.job_marker(conn, job_id)
    if row is None or (row.owner_id != caller.user_id and not caller.is_admin):
        raise JobNotFound(f"no job {job_id}")
    return row


def _look(svc: Services, caller: Caller, job_id: int, follow: _Follow
          ) -> tuple[sa.Row, list[dict[str, Any]]]:
    """The job's row, and the tasks finished since the last look that were not sent."""
    with svc.transaction() as conn:
        row = _visible(conn, caller, job_id)
        marker = (row.state, row.error, row.tasks_done)
        now = time.monotonic()
        if marker == follow.marker and now - follow.scanned_at < RECHECK_SECONDS:
            return row, []
        follow.marker, follow.scanned_at = marker, now
        found = q.finished_task_ids(conn, job_id, follow.since)
        new = [r.id for r in found if r.id not in follow.sent]
        rows = q.tasks_by_id(conn, new) if new else []
    for r in found:
        follow.sent[r.id] = r.finished_at
    if follow.sent:
        newest = max(follow.sent.values())
        follow.since = newest - OVERLAP_SECONDS
        follow.sent = {i: at for i, at in follow.sent.items() if at >= follow.since}
    return row, [_task_info(r) for r in rows]


async def finished_tasks(request: Request, svc: Services, caller: Caller, job_id: int, *,
                         since: float | None, seconds: float) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    follow = _Follow(since=since)
    started = last_output = quiet_since = last_check = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            row, finished = await run_in_threadpool(_look, svc, caller, job_id, follow)
        except PilotError as exc:  # not the caller's (any more)
            yield sse_event("gone", {"error": exc.code, "message": exc.message})
            return
        now = time.monotonic()
        if row.state != follow.state:
            follow.state = row.state
            yield sse_event("job", {"state": row.state, "error": row.error})
            last_output = quiet_since = now
        if finished:
            yield sse_event("tasks", {"tasks": finished, "since": follow.since})
            last_output = quiet_since = now
        if JobState(row.state).finished and not finished:
            yield sse_event("done", {})  # the look that saw it finished read every task
            return
        if now - last_output > PING_SECONDS:
            yield ": ping\n\n"
            last_output = now
        if now - last_check > DISCONNECT_CHECK_SECONDS:
            last_check = now
            if await request.is_disconnected():
                return
        await asyncio.sleep(min(POLL_MAX, max(POLL_MIN, (now - quiet_since) * POLL_SHARE)))


def stream_finished_tasks(request: Request, svc: Services, caller: Caller, job_id: int, *,
                          since: float | None, seconds: float) -> StreamingResponse:
    """The stream, or ``JobNotFound`` at once when the job is not the caller's."""
    with svc.transaction() as conn:
        _visible(conn, caller, job_id)
    return StreamingResponse(
        finished_tasks(request, svc, caller, job_id, since=since, seconds=seconds),
        media_type="text/event-stream", headers=HEADERS)
