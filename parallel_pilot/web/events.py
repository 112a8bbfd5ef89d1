"""Live updates for the dashboard: server-sent event streams for the jobs list, one job
and the workers list. Each stream re-renders its page's fragments about once a second and
sends those that changed (``event: fragments``, data ``{element id: html}``).

A stream lasts at most ``STREAM_SECONDS``; the browser's EventSource then reconnects
(after ``retry``) and gets every fragment again, so a page catches up after any drop.
Short streams also keep a stopping coordinator from waiting on open connections. A job
stream ends with ``event: done`` once the job has finished and everything was sent."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from parallel_pilot.coordinator.limits import JobId
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.sse import Snapshot, stream_changes
from parallel_pilot.core.states import JobState
from parallel_pilot.web import views
from parallel_pilot.web.pages import job_context
from parallel_pilot.web.viewer import PageRoute, require_viewer, services

router = APIRouter(prefix="/events", route_class=PageRoute, include_in_schema=False)

Viewer = Annotated[Caller, Depends(require_viewer)]
ServicesDep = Annotated[Services, Depends(services)]
STREAM_SECONDS = 20.0  # how long one stream lasts before the browser reconnects


def _response(request: Request, snapshot: Snapshot) -> StreamingResponse:
    return stream_changes(request, snapshot, event="fragments", seconds=STREAM_SECONDS)


@router.get("/jobs")
def jobs_events(request: Request, svc: ServicesDep, user: Viewer,
                state: JobState | None = None) -> StreamingResponse:
    def snapshot() -> tuple[dict[str, Any], bool]:
        rows = views.job_rows(svc, user, state)
        return views.render_fragments(views.JOBS_FRAGMENTS, {"rows": rows,
                                                             "viewer": user}), False

    return _response(request, snapshot)


@router.get("/jobs/{job_id}")
def job_events(request: Request, svc: ServicesDep, user: Viewer, job_id: JobId,
               task: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> StreamingResponse:
    views.job_page(svc, user, job_id, task)  # 404 now, before the stream starts

    def snapshot() -> tuple[dict[str, Any], bool]:
        view = views.job_page(svc, user, job_id, task)
        finished = view.info.state.finished and not any(
            t.state == "leased" for t in view.tasks)
        return views.render_fragments(views.JOB_FRAGMENTS, job_context(request, view)), finished

    return _response(request, snapshot)


@router.get("/workers")
def workers_events(request: Request, svc: ServicesDep, user: Viewer) -> StreamingResponse:
    def snapshot() -> tuple[dict[str, Any], bool]:
        context = {"workers": views.workers_list(svc, user), "now": svc.clock()}
        return views.render_fragments(views.WORKERS_FRAGMENTS, context), False

    return _response(request, snapshot)
