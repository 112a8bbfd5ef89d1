"""Live updates for the dashboard: server-sent event streams for the jobs list, one job
and the workers list. Each stream re-renders its page's fragments about once a second and
sends those that changed (``event: fragments``, data ``{element id: html}``).

A stream lasts at most ``STREAM_SECONDS``; the browser's EventSource then reconnects
(after ``retry``) and gets every fragment again, so a page catches up after any drop.
Short streams also keep a stopping coordinator from waiting on open connections. A job
stream ends with ``event: done`` once the job has finished and everything was sent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator.limits import JobId
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.core.states import JobState
from parallel_pilot.errors import PilotError
from parallel_pilot.web import views
from parallel_pilot.web.pages import job_context
from parallel_pilot.web.viewer import PageRoute, require_viewer, services

router = APIRouter(prefix="/events", route_class=PageRoute, include_in_schema=False)

Viewer = Annotated[Caller, Depends(require_viewer)]
ServicesDep = Annotated[Services, Depends(services)]
POLL_SECONDS = 1.0  # how often a stream looks for changes
STREAM_SECONDS = 20.0  # how long one stream lasts before the browser reconnects
PING_SECONDS = 10.0  # a comment line this often keeps proxies from closing a quiet stream
RETRY_MS = 1000  # the browser's reconnect delay after a stream ends or drops
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

Snapshot = Callable[[], tuple[dict[str, str], bool]]


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


async def _stream(request: Request, snapshot: Snapshot,
                  poll: float = POLL_SECONDS) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    sent: dict[str, str] = {}
    started = last_output = time.monotonic()
    while time.monotonic() - started < STREAM_SECONDS:
        try:
            fragments, finished = await run_in_threadpool(snapshot)
        except PilotError as exc:  # the job is gone for this viewer, or the session ended
            yield _event("gone", {"message": exc.message})
            return
        changed = {k: v for k, v in fragments.items() if sent.get(k) != v}
        if changed:
            sent.update(changed)
            yield _event("fragments", changed)
            last_output = time.monotonic()
        elif time.monotonic() - last_output > PING_SECONDS:
            yield ": ping\n\n"
            last_output = time.monotonic()
        if finished:
            yield _event("done", {})
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll)


def _response(request: Request, snapshot: Snapshot) -> StreamingResponse:
    return StreamingResponse(_stream(request, snapshot), media_type="text/event-stream",
                             headers=HEADERS)


@router.get("/jobs")
def jobs_events(request: Request, svc: ServicesDep, user: Viewer,
                state: JobState | None = None) -> StreamingResponse:
    def snapshot() -> tuple[dict[str, str], bool]:
        rows = views.job_rows(svc, user, state)
        return views.render_fragments(views.JOBS_FRAGMENTS, {"rows": rows,
                                                             "viewer": user}), False

    return _response(request, snapshot)


@router.get("/jobs/{job_id}")
def job_events(request: Request, svc: ServicesDep, user: Viewer, job_id: JobId,
               task: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> StreamingResponse:
    views.job_page(svc, user, job_id, task)  # 404 now, before the stream starts

    def snapshot() -> tuple[dict[str, str], bool]:
        view = views.job_page(svc, user, job_id, task)
        finished = view.info.state.finished and not any(
            t.state == "leased" for t in view.tasks)
        return views.render_fragments(views.JOB_FRAGMENTS, job_context(request, view)), finished

    return _response(request, snapshot)


@router.get("/workers")
def workers_events(request: Request, svc: ServicesDep, user: Viewer) -> StreamingResponse:
    def snapshot() -> tuple[dict[str, str], bool]:
        context = {"workers": views.workers_list(svc, user), "now": svc.clock()}
        return views.render_fragments(views.WORKERS_FRAGMENTS, context), False

    return _response(request, snapshot)
