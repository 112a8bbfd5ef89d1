"""Following jobs without blocking Blender: each submission or followed job has a thread
that does the network work (upload, submit, then a look at the job every second) and
posts what it learns to one queue; a ``bpy.app.timers`` function on the main thread
drains the queue into ``STATUSES`` (one per scene), writes the new job's id on its scene
and redraws the Properties editors, where the panel reads the status.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import bpy

from . import pack, results, submit
from .api import Api, ApiError, job_page
from .properties import job_settings

POLL_SECONDS = 1.0  # between looks at a running job
RETRY_MAX_SECONDS = 10.0  # longest wait between looks while the coordinator is unreachable
TIMER_SECONDS = 0.25  # between drains of the queue on the main thread
FINISHED_STATES = ("completed", "failed", "cancelled")


@dataclass
class Status:
    """What the panel shows for one scene's job."""

    key: str  # the scene's (submit.scene_key)
    server: str
    job_id: int = 0
    state: str = "uploading"  # uploading, queued, running, completed, failed, cancelled, error
    text: str = ""
    progress: float = 0.0  # 0..1
    error: str = ""
    report: str = ""  # what the upload sent
    download: str = ""  # how the download of the results goes
    finished: bool = False
    updated: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        return job_page(self.server, self.job_id) if self.job_id else ""


STATUSES: dict[str, Status] = {}  # scene key -> status; read and written on the main thread
# what the threads learnt, for the status it was meant for (a status replaced by a newer
# submission of its scene keeps getting its own thread's news, and is no longer shown)
_events: queue.SimpleQueue[tuple[Status, dict]] = queue.SimpleQueue()
_threads: dict[str, tuple[threading.Thread, threading.Event]] = {}
_notify: list[Callable[[str], None]] = []  # called with each new error (the UI's popup)


def busy(key: str) -> bool:
    entry = _threads.get(key)
    return entry is not None and entry[0].is_alive()


def job_fields(job: dict) -> dict:
    """A ``JobInfo`` as status fields."""
    state = str(job.get("state", ""))
    fields = {"job_id": int(job["id"]), "state": state,
              "progress": float(job.get("progress") or 0.0),
              "finished": state in FINISHED_STATES, "error": str(job.get("error") or "")}
    done, total = job.get("tasks_done", 0), job.get("tasks_total", 0)
    text = f"{state}: {done}/{total} tasks"
    eta = job.get("eta_seconds")
    if state == "running" and eta:
        text += f", about {int(eta) // 60}:{int(eta) % 60:02d} left"
    fields["text"] = text
    return fields


def finished_text(api: Api, job: dict) -> str:
    """What came back: frames, video, zip."""
    return f"{job['state']}: {results.summary(api.outputs(int(job['id'])))}"


def follow_job(api: Api, job_id: int, stop: threading.Event,
               post: Callable[[dict], None]) -> dict:
    """Look at the job every ``POLL_SECONDS`` until it finishes (or ``stop``); its last
    ``JobInfo``. An unreachable coordinator is retried, waiting longer each time."""
    wait, job = POLL_SECONDS, {}
    while not stop.is_set():
        try:
            job = api.job(job_id)
        except ApiError as exc:
            if exc.status:  # the coordinator answered: the job is gone, the token revoked
                raise
            post({"text": f"{exc.message}; trying again"})
            wait = min(RETRY_MAX_SECONDS, wait * 2)
        else:
            wait = POLL_SECONDS
            fields = job_fields(job)
            if fields["finished"]:
                fields["text"] = finished_text(api, job)
            post(fields)
            if fields["finished"]:
                return job
        stop.wait(wait)
    return job


def _run(status: Status, stop: threading.Event, token: str,
         submission: submit.Submission | None, job_id: int) -> None:
    """The thread of one scene: submit (when given a submission), then follow."""

    def post(fields: dict) -> None:
        _events.put((status, fields))

    try:
        api = Api(status.server, token)
        if submission is not None:
            job, report = submit.send(
                submission, lambda text, f: post({"text": text, "progress": f}))
            post({**job_fields(job), "report": pack.describe_report(report), "submitted": job})
            job_id = int(job["id"])
        follow_job(api, job_id, stop, post)
    except ApiError as exc:
        post({"state": "error", "error": exc.message, "finished": True})
    except Exception as exc:  # shown in the panel: a thread has no one else to tell
        traceback.print_exc()
        post({"state": "error", "error": f"{type(exc).__name__}: {exc}", "finished": True})


def _spawn(thread_key: str, target: Callable[[threading.Event], None]) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), daemon=True,
                              name=f"parallel-pilot {thread_key}")
    _threads[thread_key] = (thread, stop)
    thread.start()
    if not bpy.app.timers.is_registered(drain):
        bpy.app.timers.register(drain, first_interval=TIMER_SECONDS, persistent=True)


def start(key: str, server: str, token: str, *, submission: submit.Submission | None = None,
          job_id: int = 0) -> Status:
    """Upload and submit ``submission``, or follow ``job_id``, in a thread of its own."""
    stop_following(key)
    status = STATUSES[key] = Status(key=key, server=server, job_id=job_id,
                                    state="uploading" if submission else "following")
    _spawn(key, lambda stop: _run(status, stop, token, submission, job_id))
    return status


def start_download(key: str, server: str, token: str, job_id: int, folder: str) -> None:
    """Download the job's frames and video into ``folder`` in a thread of its own."""
    status = STATUSES.setdefault(key, Status(key=key, server=server, job_id=job_id,
                                             state="following"))

    def run(_stop: threading.Event) -> None:
        try:
            results.download(Api(server, token), job_id, folder,
                             lambda text, _f: _events.put((status, {"download": text})))
        except ApiError as exc:
            _events.put((status, {"download": f"download failed: {exc.message}"}))
        except OSError as exc:
            _events.put((status, {"download": f"download failed: {exc}"}))

    _spawn(key + "#download", run)


def stop_following(key: str) -> None:
    entry = _threads.pop(key, None)
    if entry is not None:
        entry[1].set()


def stop_all() -> None:
    for key in list(_threads):
        stop_following(key)
    if bpy.app.timers.is_registered(drain):
        bpy.app.timers.unregister(drain)


def _apply(status: Status, fields: dict) -> None:
    job = fields.pop("submitted", None)
    if job is not None and STATUSES.get(status.key) is status:
        for scene in bpy.data.scenes:  # the file may have been closed meanwhile
            if submit.scene_key(scene) == status.key:
                settings = job_settings(scene)
                settings.job_id, settings.job_server = int(job["id"]), status.server
    new_error = fields.get("error") and fields.get("error") != status.error
    for name, value in fields.items():
        setattr(status, name, value)
    status.updated = time.time()
    if new_error:
        for tell in _notify:
            tell(status.error)


def drain() -> float | None:
    """The timer: apply what the threads posted, redraw; stops when nothing is left."""
    changed = False
    while True:
        try:
            status, fields = _events.get_nowait()
        except queue.Empty:
            break
        _apply(status, fields)
        changed = True
    if changed:
        for window in getattr(bpy.context.window_manager, "windows", []):
            for area in window.screen.areas:
                if area.type == "PROPERTIES":
                    area.tag_redraw()
    alive = any(thread.is_alive() for thread, _stop in _threads.values())
    return TIMER_SECONDS if alive or not _events.empty() else None
