"""What the dashboard shows, built from the same services as the JSON API: rows of the
jobs list (with frames or items done), a job's page (tasks, the selected task's log tail,
preview, thumbnails, video and downloads, a sweep's results) and the workers list.

Each page is cut into named fragments; the page renders them all, and the live-update
streams re-render them and send the ones that changed."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from parallel_pilot.coordinator.services import jobs
from parallel_pilot.coordinator.services import workers as worker_service
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.core.protocol import JobInfo, TaskInfo, WorkerInfo
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.store import queries as q
from parallel_pilot.web.templating import fragment

JOBS_LISTED = 200  # jobs the list page shows at most
LOG_TAIL_LINES = 60  # lines of the selected task's log shown on the job page
THUMBNAILS_SHOWN = 48  # finished frames shown as thumbnails (the newest ones)
FRAMES_PREFIX = "frames/"
VIDEO_FRAMES_PREFIX = "video-frames/"  # 8-bit copies of OpenEXR frames, made for the video
PREVIEW_PATH = "preview/latest.jpg"
VIDEO_PATH = "video.mp4"
ZIP_PATH = "frames.zip"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
JOB_STATES = [s.value for s in JobState]

JOBS_FRAGMENTS = ("jobs_rows",)
JOB_FRAGMENTS = ("job_summary", "job_actions", "task_grid", "task_panel", "job_preview",
                 "job_thumbs", "job_outputs")
WORKERS_FRAGMENTS = ("workers_rows",)


@dataclass
class JobRow:
    """A job as the list shows it: what it counts in (frames, items or tasks) and how far."""

    info: JobInfo
    unit: str
    done: int
    total: int
    elapsed: float | None


@dataclass
class JobPage:
    row: JobRow
    tasks: list[TaskInfo]
    selected: TaskInfo | None
    log: list[Any]
    preview: Any | None
    thumbs: list[Any]
    video: Any | None
    archive: Any | None
    files: list[Any]
    results: list[dict[str, Any]] | None
    counts: dict[str, int] = field(default_factory=dict)
    rounds: list[dict[str, Any]] | None = None  # a train job's metrics, one row per round

    @property
    def round_metrics(self) -> list[str]:
        """The eval metrics besides the loss that the rounds report (``eval_accuracy``)."""
        names = {k for row in self.rounds or [] for k in row}
        return sorted(k for k in names if k.startswith("eval_") and k != "eval_loss")

    @property
    def info(self) -> JobInfo:
        return self.row.info


def elapsed(info: JobInfo, now: float) -> float | None:
    if info.started_at is None:
        return None
    return (info.finished_at or now) - info.started_at


def frame_total(info: JobInfo) -> int:
    from parallel_pilot.kinds.render.kind import expand_frames

    try:
        return len(expand_frames(str(info.params.get("frames") or "")))
    except ValueError:
        return max(info.tasks_total - 1, 0)


def _row(info: JobInfo, frames_done: dict[int, int], now: float) -> JobRow:
    if info.kind == "render":
        return JobRow(info, "frames", frames_done.get(info.id, 0), frame_total(info),
                      elapsed(info, now))
    unit = "items" if info.kind == "sweep" else "tasks"
    return JobRow(info, unit, info.tasks_done, info.tasks_total, elapsed(info, now))


def _frames_done(svc: Services, infos: list[JobInfo]) -> dict[int, int]:
    ids = [i.id for i in infos if i.kind == "render"]
    if not ids:
        return {}
    with svc.transaction() as conn:
        return q.output_counts_under(conn, ids, FRAMES_PREFIX)


def job_rows(svc: Services, caller: Caller, state: JobState | None) -> list[JobRow]:
    infos = jobs.list_jobs(svc, caller, state, JOBS_LISTED)
    done = _frames_done(svc, infos)
    now = svc.clock()
    return [_row(info, done, now) for info in infos]


def task_number(task: TaskInfo) -> int:
    """The task's number as users see it (dashboard, ``pilot logs --task``): index + 1."""
    return task.index + 1


def _pick_task(tasks: list[TaskInfo], number: int | None) -> TaskInfo | None:
    """The task whose log the page shows: the one asked for (by its number in the job),
    else a failed one, else one that runs now, else the last one that finished."""
    if number is not None:
        return next((t for t in tasks if task_number(t) == number), None)
    for wanted in (TaskState.FAILED, TaskState.LEASED):
        found = next((t for t in tasks if t.state == wanted), None)
        if found is not None:
            return found
    done = [t for t in tasks if t.finished_at is not None]
    return max(done, key=lambda t: t.finished_at or 0) if done else None


def _results(tasks: list[TaskInfo]) -> list[dict[str, Any]]:
    rows = []
    for t in tasks:
        r = t.result or {}
        rows.append({"task": t, "item": r.get("item", t.name), "exit_code": r.get("exit_code"),
                     "stdout": str(r.get("stdout") or "")[-400:],
                     "stderr": str(r.get("stderr") or "")[-400:],
                     "files": sorted(r.get("files") or {}), "seconds": r.get("seconds")})
    return rows


def _rounds(tasks: list[TaskInfo]) -> list[dict[str, Any]]:
    from parallel_pilot.kinds.train.kind import metrics_row  # no torch: plain dicts

    rows = [row for t in tasks if t.state == TaskState.DONE
            and (row := metrics_row(t.result or {})) is not None]
    return sorted(rows, key=lambda r: r["round"])


def job_page(svc: Services, caller: Caller, job_id: int, number: int | None) -> JobPage:
    """A job's page; ``number`` picks the task whose log is shown (task N of the job)."""
    info = jobs.get(svc, caller, job_id)  # JobNotFound for another user's job
    tasks = jobs.tasks(svc, caller, job_id)
    outputs = jobs.outputs(svc, caller, job_id)
    selected = _pick_task(tasks, number)
    log: list[sa.Row[Any]] = []
    if selected is not None:
        with svc.transaction() as conn:
            log = q.log_tail(conn, job_id, selected.id, LOG_TAIL_LINES)
    by_path: dict[str, Any] = {}
    for out in outputs:  # ordered by path, then id: the newest of a path wins
        by_path[out.path] = out
    frames = [o for p, o in sorted(by_path.items())
              if p.startswith(FRAMES_PREFIX) and p.lower().endswith(IMAGE_EXTENSIONS)]
    if not frames:  # OpenEXR frames cannot be shown: their 8-bit copies can
        frames = [o for p, o in sorted(by_path.items()) if p.startswith(VIDEO_FRAMES_PREFIX)]
    counts = {s.value: 0 for s in TaskState}
    for t in tasks:
        counts[t.state.value] += 1
    done = {job_id: len([p for p in by_path if p.startswith(FRAMES_PREFIX)])}
    listed = {VIDEO_PATH, ZIP_PATH}
    # the job's result files: top-level paths (results.jsonl, model.safetensors, metrics.csv),
    # not per-item folders (frames/, results/<item>/) nor working state (rounds/)
    files = [o for p, o in sorted(by_path.items()) if "/" not in p and p not in listed]
    return JobPage(
        row=_row(info, done, svc.clock()), tasks=tasks, selected=selected, log=log,
        preview=by_path.get(PREVIEW_PATH) or (frames[-1] if frames else None),
        thumbs=frames[-THUMBNAILS_SHOWN:], video=by_path.get(VIDEO_PATH),
        archive=by_path.get(ZIP_PATH), files=files,
        results=_results(tasks) if info.kind == "sweep" else None, counts=counts,
        rounds=_rounds(tasks) if info.kind == "train" else None,
    )


@dataclass
class CurrentTask:
    id: int
    job_id: int | None  # None: another user's job, which this viewer may not see
    name: str
    number: int  # task N of its job (index + 1), as the job page numbers it


@dataclass
class WorkerRow:
    info: WorkerInfo
    current: list[CurrentTask]


def workers_list(svc: Services, caller: Caller) -> list[WorkerRow]:
    """The farm, with each worker's current tasks named where the viewer owns their job."""
    workers = worker_service.list_workers(svc)
    ids = [t for w in workers for t in w.current_tasks]
    with svc.transaction() as conn:
        tasks = {t.id: t for t in q.get_tasks(conn, ids)} if ids else {}
        owners = {j: row.owner_id for j in {t.job_id for t in tasks.values()}
                  if (row := q.get_job(conn, j)) is not None}
    rows = []
    for w in workers:
        current = []
        for task_id in w.current_tasks:
            task = tasks.get(task_id)
            if task is None:
                continue
            mine = caller.is_admin or owners.get(task.job_id) == caller.user_id
            current.append(CurrentTask(task_id, task.job_id if mine else None,
                                       task.name if mine else "", task.idx + 1))
        rows.append(WorkerRow(w, current))
    return rows


def file_name(path: str) -> str:
    return posixpath.basename(path) or "file"


def render_fragments(names: tuple[str, ...], context: dict[str, Any]) -> dict[str, str]:
    """Each named fragment rendered, keyed by the id of the element it fills."""
    return {name.replace("_", "-"): fragment(name, context) for name in names}
