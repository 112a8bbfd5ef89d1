"""Job endpoints for users: submit, list, show, a stream of changes (server-sent events),
cancel (whole or some tasks), retry, tasks, outputs, logs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from parallel_pilot.coordinator.auth import CurrentUser, ServicesDep
from parallel_pilot.coordinator.limits import MAX_DB_INT, AfterId, JobId, TaskFilter
from parallel_pilot.coordinator.services import jobs
from parallel_pilot.coordinator.sse import stream_changes
from parallel_pilot.coordinator.strict_route import StrictRoute
from parallel_pilot.coordinator.task_stream import stream_finished_tasks
from parallel_pilot.core.protocol import (
    JobInfo,
    JobList,
    JobSubmit,
    LogLine,
    LogList,
    OutputInfo,
    OutputList,
    TaskCancel,
    TaskCancelled,
    TaskList,
)
from parallel_pilot.core.states import JobState

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictRoute)

DEFAULT_JOBS_LISTED = 100  # jobs listed when no limit is given
MAX_LOG_LINES = 10_000  # log lines one request returns at most
DEFAULT_EVENT_SECONDS = 300.0  # how long a job's event stream lasts unless asked otherwise
MAX_EVENT_SECONDS = 3600.0  # the most a client may ask for (the settings may cap it lower)

TaskNumber = Annotated[int | None, Query(
    ge=1, le=MAX_DB_INT, description="only the task with this number in the job (1-based, "
    "as the dashboard and `pilot logs --task` number them)")]


IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="a key of the client's choosing, the same on each "
    "try of one submission: a repeated key gets the job it made, never a second one")]


@router.post("", response_model=JobInfo, status_code=201)
def submit(svc: ServicesDep, user: CurrentUser, body: JobSubmit,
           idempotency_key: IdempotencyKey = None) -> JobInfo:
    return jobs.submit(svc, user, body, idempotency_key)


@router.get("", response_model=JobList)
def list_jobs(svc: ServicesDep, user: CurrentUser, state: JobState | None = None,
              limit: int = Query(DEFAULT_JOBS_LISTED, ge=1, le=jobs.MAX_JOBS_LISTED)) -> JobList:
    return JobList(jobs=jobs.list_jobs(svc, user, state, limit))


@router.get("/{job_id}", response_model=JobInfo)
def get_job(svc: ServicesDep, user: CurrentUser, job_id: JobId) -> JobInfo:
    return jobs.get(svc, user, job_id)


@router.post("/{job_id}/cancel", response_model=JobInfo)
def cancel(svc: ServicesDep, user: CurrentUser, job_id: JobId) -> JobInfo:
    return jobs.cancel(svc, user, job_id)


@router.post("/{job_id}/tasks/cancel", response_model=TaskCancelled)
def cancel_tasks(svc: ServicesDep, user: CurrentUser, job_id: JobId,
                 body: TaskCancel) -> TaskCancelled:
    cancelled, info = jobs.cancel_tasks(svc, user, job_id, body.task_ids)
    return TaskCancelled(cancelled=cancelled, job=info)


@router.post("/{job_id}/retry", response_model=JobInfo)
def retry(svc: ServicesDep, user: CurrentUser, job_id: JobId) -> JobInfo:
    return jobs.retry(svc, user, job_id)


@router.get("/{job_id}/events", response_class=StreamingResponse, responses={200: {
    "content": {"text/event-stream": {}},
    "description": "Server-sent events: `job` (data `{\"job\": JobInfo}`) whenever the job "
                   "changes, then `done` once it has finished; `gone` if it stops being "
                   "visible. The stream ends after `seconds`; reconnect to go on."}})
def job_events(request: Request, svc: ServicesDep, user: CurrentUser, job_id: JobId,
               seconds: float = Query(DEFAULT_EVENT_SECONDS, gt=0, le=MAX_EVENT_SECONDS),
               tasks: Literal["finished"] | None = Query(None, description=(
                   "`finished`: stream the tasks that finish, with their results, instead "
                   "(events `job` `{state, error}`, `tasks` `{tasks: [TaskInfo], since}`, "
                   "`done`; see coordinator/task_stream.py)")),
               since: float | None = Query(None, ge=0, description=(
                   "with tasks=finished: only tasks finished at or after this time (the "
                   "`since` of the last `tasks` event, to resume a dropped stream)")),
               ) -> StreamingResponse:
    if tasks == "finished":  # 404 now, before the stream starts, in either case
        return stream_finished_tasks(request, svc, user, job_id, since=since, seconds=min(
            seconds, svc.settings.max_event_stream_seconds))
    jobs.get(svc, user, job_id)

    def snapshot() -> tuple[dict[str, object], bool]:
        info = jobs.get(svc, user, job_id)
        return {"job": info.model_dump(mode="json")}, info.state.finished

    seconds = min(seconds, svc.settings.max_event_stream_seconds)
    return stream_changes(request, snapshot, event="job", seconds=seconds)


@router.get("/{job_id}/tasks", response_model=TaskList)
def tasks(svc: ServicesDep, user: CurrentUser, job_id: JobId) -> TaskList:
    return TaskList(tasks=jobs.tasks(svc, user, job_id))


@router.get("/{job_id}/outputs", response_model=OutputList)
def outputs(svc: ServicesDep, user: CurrentUser, job_id: JobId) -> OutputList:
    return OutputList(outputs=[
        OutputInfo(path=r.path, sha256=r.sha256, size=r.size, task_id=r.task_id)
        for r in jobs.outputs(svc, user, job_id)
    ])


@router.get("/{job_id}/logs", response_model=LogList)
def logs(svc: ServicesDep, user: CurrentUser, job_id: JobId, task_id: TaskFilter = None,
         task: TaskNumber = None, after: AfterId = 0,
         limit: int = Query(MAX_LOG_LINES, ge=1, le=MAX_LOG_LINES)) -> LogList:
    rows = jobs.logs(svc, user, job_id, task_id, after, limit, task_number=task)
    return LogList(lines=[
        LogLine(id=r.id, task_id=r.task_id, attempt=r.attempt, at=r.at, line=r.line)
        for r in rows
    ])
