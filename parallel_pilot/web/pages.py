"""Dashboard pages for jobs and workers: the jobs list, submitting a render, a job's page
(with cancel and retry), its files, and the workers list. Pages render on the server and
read without JavaScript; ``events.py`` keeps them live."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator.limits import JobId
from parallel_pilot.coordinator.services import jobs
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.strict_route import streamed_body
from parallel_pilot.core.protocol import SHA256_RE
from parallel_pilot.core.states import JobState
from parallel_pilot.errors import BlobNotFound
from parallel_pilot.store import queries as q
from parallel_pilot.web import submit, views
from parallel_pilot.web.templating import STATIC_DIR, page
from parallel_pilot.web.viewer import PageRoute, form_user, require_viewer, services

router = APIRouter(route_class=PageRoute, include_in_schema=False)

Viewer = Annotated[Caller, Depends(require_viewer)]
FormUser = Annotated[Caller, Depends(form_user)]
ServicesDep = Annotated[Services, Depends(services)]
FAVICON = "favicon.ico"  # in static/, beside favicon.svg (the same icon, for the page's link)
FAVICON_SECONDS = 86400  # how long browsers may keep the icon
MEDIA_TYPES = {".mp4": "video/mp4", ".zip": "application/zip", ".png": "image/png",
               ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".exr": "image/x-exr",
               ".jsonl": "application/jsonl", ".json": "application/json",
               ".txt": "text/plain", ".csv": "text/csv", ".blend": "application/x-blender"}


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    """The icon browsers ask for on their own (no login needed)."""
    return FileResponse(STATIC_DIR / FAVICON, media_type="image/x-icon",
                        headers={"Cache-Control": f"public, max-age={FAVICON_SECONDS}"})


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/jobs", status_code=303)


@router.get("/jobs")
def jobs_list(request: Request, svc: ServicesDep, user: Viewer,
              state: JobState | None = None) -> Response:
    rows = views.job_rows(svc, user, state)
    return page(request, "jobs.html", {"rows": rows, "state": state.value if state else "",
                                       "states": views.JOB_STATES}, viewer=user)


@router.get("/jobs/new")
def new_job(request: Request, user: Viewer) -> Response:
    return page(request, "submit.html", {"form": submit.SubmitForm(values={"format": "PNG"}),
                                         "engines": submit.ENGINES,
                                         "formats": submit.FORMATS}, viewer=user)


@router.post("/jobs/new")
@streamed_body
async def post_job(request: Request, svc: ServicesDep, user: Viewer) -> Response:
    """The upload form: streamed in; on success to the job's page, else the form again
    with each error next to its field (400)."""
    job, form = await submit.handle(request, svc, user)
    if job is not None:
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)
    return page(request, "submit.html", {"form": form, "engines": submit.ENGINES,
                                         "formats": submit.FORMATS}, viewer=user,
                status_code=400)


def job_context(request: Request, view: views.JobPage) -> dict[str, object]:
    from parallel_pilot.coordinator.sessions import CSRF_COOKIE, CSRF_FORM_FIELD

    return {"job": view, "csrf_token": request.cookies.get(CSRF_COOKIE, ""),
            "csrf_field": CSRF_FORM_FIELD}


@router.get("/jobs/{job_id}")
def job_page(request: Request, svc: ServicesDep, user: Viewer, job_id: JobId,
             task: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> Response:
    """A job's page; ``?task=N`` shows the log of task N of the job (numbered 1..N in plan
    order, as ``pilot logs JOB --task N`` numbers them)."""
    view = views.job_page(svc, user, job_id, task)
    return page(request, "job.html", {**job_context(request, view), "task_param": task},
                viewer=user)


@router.post("/jobs/{job_id}/cancel")
def cancel(svc: ServicesDep, user: FormUser, job_id: JobId) -> RedirectResponse:
    jobs.cancel(svc, user, job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/retry")
def retry(svc: ServicesDep, user: FormUser, job_id: JobId) -> RedirectResponse:
    jobs.retry(svc, user, job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


def _job_file(svc: Services, user: Caller, job_id: int, sha256: str) -> tuple[str, int]:
    jobs.get(svc, user, job_id)  # JobNotFound for another user's job
    if not SHA256_RE.match(sha256):
        raise BlobNotFound(f"job {job_id} has no such file")
    with svc.transaction() as conn:
        row = q.job_output_by_sha(conn, job_id, sha256)
    if row is None or not svc.blobs.exists(sha256):
        raise BlobNotFound(f"job {job_id} has no such file")
    return row.path, row.size


@router.get("/jobs/{job_id}/files/{sha256}/{name}")
async def job_file(svc: ServicesDep, user: Viewer, job_id: JobId, sha256: str, name: str,
                   download: bool = False) -> Response:
    """One output of the job, by its hash (so it may be cached for good), with a media type
    from its name; ``?download=1`` saves it instead of showing it."""
    path, _size = await run_in_threadpool(_job_file, svc, user, job_id, sha256)
    filename = views.file_name(path)
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return FileResponse(svc.blobs.path(sha256),
                        media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
                        filename=filename,
                        content_disposition_type="attachment" if download else "inline",
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})


@router.get("/workers")
def workers_page(request: Request, svc: ServicesDep, user: Viewer) -> Response:
    return page(request, "workers.html", {"workers": views.workers_list(svc, user),
                                          "now": svc.clock()}, viewer=user)
