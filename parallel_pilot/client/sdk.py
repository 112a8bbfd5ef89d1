"""The Python SDK: ``Client`` submits jobs, follows them and fetches their results.

Every call goes through ``parallel_pilot.http.Connection`` with the wire models of
``core.protocol``; failures are the ``PilotError`` classes of ``parallel_pilot.errors``.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from parallel_pilot.client import config
from parallel_pilot.client.accounts_api import AccountCalls
from parallel_pilot.client.job_files import name_files, safe_destination
from parallel_pilot.client.job_files import outputs_to_download as select_downloads
from parallel_pilot.core.protocol import (
    Health,
    JobInfo,
    JobList,
    JobSubmit,
    LogLine,
    LogList,
    OutputInfo,
    OutputList,
    TaskCancel,
    TaskCancelled,
    TaskInfo,
    TaskList,
    UserInfo,
    WorkerInfo,
    WorkerList,
)
from parallel_pilot.core.requirements import RequirementsLike, requirements_from
from parallel_pilot.core.settings import ClientSettings
from parallel_pilot.core.states import JobState
from parallel_pilot.errors import InvalidInput, ServerUnavailable, error_from_body
from parallel_pilot.http import RETRY_SECONDS, Connection, idempotency_key, sha256_file

DEFAULT_POLL_SECONDS = 0.5  # seconds between polls of a job's state in wait()
POLL_TIMEOUT = 30.0  # seconds one poll request may take
WATCH_STREAM_SECONDS = 300.0  # one event stream of watch() lasts at most this; then reopened
LOG_PAGE_LINES = 10_000  # log lines asked for per request (the coordinator's maximum)
MAX_LOG_PAGES = 1_000  # pages logs() fetches at most, so a runaway log cannot loop forever

# what Client.finished_tasks yields: ("job", (state, error)), ("tasks", (tasks, since)),
# ("done", None)
FinishedTasksEvent = tuple[str, Any]


class Client(AccountCalls):
    """A connection to one coordinator as one user.

    ``server`` and ``token`` default to ``PILOT_SERVER``/``PILOT_TOKEN`` and then to the
    config file written by ``pilot login``. ``transport`` replaces the HTTP transport (tests
    pass ``httpx.MockTransport`` or ``httpx.ASGITransport``).
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        settings: ClientSettings | None = None,
        require_token: bool = True,
        transport: httpx.BaseTransport | None = None,
        retry_seconds: float = RETRY_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        resolved = config.resolve(server, token, settings, require_token=require_token)
        self._sleep = sleep
        self.connection = Connection(resolved.server, resolved.token, transport=transport,
                                     retry_seconds=retry_seconds, sleep=sleep,
                                     interactive=True)

    @property
    def server(self) -> str:
        """The coordinator calls go to now (``server`` may name several, comma-separated:
        the next is tried when one cannot be reached)."""
        return self.connection.server

    def close(self) -> None:
        """Close the HTTP connection (also done by ``with Client(...) as client:``)."""
        self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ account

    def health(self) -> Health:
        """Whether the coordinator answers (needs no token)."""
        return self.connection.call("GET", "/health", Health, retry=False)

    def me(self) -> UserInfo:
        """The user the token belongs to."""
        return self.connection.call("GET", "/me", UserInfo)

    # ------------------------------------------------------------ submit

    def submit(self, kind: str, params: dict[str, Any], *, priority: int = 0,
               name: str | None = None, max_attempts: int | None = None,
               requirements: RequirementsLike = None) -> JobInfo:
        """Submit a job of ``kind``; the coordinator validates ``params`` and plans tasks.
        ``requirements`` is what every task needs of a worker: the ``--requires`` text
        (``"gpu,vram>=8G,ram>=16G,cores>=4,tag=studio-a,blender>=4.2,sandbox"``), a
        ``Requirements`` or a dict of its fields (core.requirements); only workers that
        meet it get the job's tasks, and ``JobInfo.waiting_reason`` says when none can."""
        body = JobSubmit(kind=kind, params=params, priority=priority, name=name,
                         max_attempts=max_attempts,
                         requirements=requirements_from(requirements))
        # one key for this submission: a retry after a lost answer gets the same job back
        return self.connection.call("POST", "/jobs", JobInfo, body=body,
                                    idempotency_key=idempotency_key())

    def submit_sweep(
        self,
        command: Sequence[str],
        items: str | Sequence[str],
        *,
        files: Mapping[str, Path] | Iterable[Path] = (),
        collect: Iterable[str] = (),
        timeout_seconds: float | None = None,
        name: str | None = None,
        priority: int = 0,
        on_upload: Callable[[str, Path], None] | None = None,
        require_sandbox: bool = False,
        requirements: RequirementsLike = None,
    ) -> JobInfo:
        """Run ``command`` once per item (``{item}`` in an argument is replaced by the item).

        ``items`` is a range like ``"1-100"`` / ``"a,b,c"`` (sent as written; the coordinator
        parses it) or a list. ``files`` is either a mapping of name in the working directory
        to local path, or local paths named as given relative to the current directory.
        Each distinct file is uploaded at most once, and not at all if the coordinator has it.
        ``collect`` holds globs of output files to gather from each run. With
        ``require_sandbox`` only workers that run commands in a sandbox (bwrap) take it.
        """
        named = name_files(files)
        shas: dict[str, str] = {}  # local path -> SHA-256, so a file is hashed once
        uploaded: set[str] = set()
        job_files: dict[str, str] = {}
        for job_name, path in named.items():
            key = str(path.resolve())
            if key not in shas:
                shas[key] = sha256_file(path)
            sha = shas[key]
            if sha not in uploaded:
                if on_upload is not None:
                    on_upload(job_name, path)
                self.connection.upload_blob(path, sha)
                uploaded.add(sha)
            job_files[job_name] = sha
        params: dict[str, Any] = {
            "command": list(command),
            "items": items if isinstance(items, str) else list(items),
            "files": job_files,
            "collect": list(collect),
        }
        if timeout_seconds is not None:
            params["timeout_seconds"] = timeout_seconds
        return self.submit("sweep", params, priority=priority, name=name,
                           requirements=_with_sandbox(requirements, require_sandbox))

    def submit_python(
        self,
        params: dict[str, Any],
        *,
        name: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        require_sandbox: bool = False,
        requirements: RequirementsLike = None,
    ) -> JobInfo:
        """Submit a ``python`` job (calls of cloudpickled functions). ``params`` follow
        ``kinds.python.PythonParams``; ``parallel_pilot.Executor`` builds them, so most code
        uses the Executor rather than this. Only workers whose owner allowed ``python`` run
        it; with ``require_sandbox`` only those that sandbox it in bwrap."""
        return self.submit("python", params, priority=priority, name=name,
                           max_attempts=max_attempts,
                           requirements=_with_sandbox(requirements, require_sandbox))

    def submit_render(
        self,
        scene: Path,
        *,
        frames: str | None = None,
        chunk: int | None = None,
        engine: str | None = None,
        samples: int | None = None,
        resolution: int | None = None,
        format: str | None = None,
        color_depth: str | None = None,
        device: str | None = None,
        camera: str | None = None,
        scene_name: str | None = None,
        fps: float | None = None,
        allow_missing_files: bool = False,
        inspect: bool = True,
        name: str | None = None,
        priority: int = 0,
        on_inspect: Callable[[dict[str, Any]], None] | None = None,
        on_event: Callable[[str, Any], None] | None = None,
        requirements: RequirementsLike = None,
    ) -> JobInfo:
        """Render the Blender project of the .blend ``scene`` on the workers (kind
        ``render``).

        The file is checked to be a .blend before anything is sent. When ``inspect`` is
        true and Blender (the ``bpy`` package or a ``blender`` executable) is installed
        here, the file is opened once locally: every file its scenes use (linked
        libraries, textures, UDIM tiles, sequences, caches, fonts, sounds…) is traced and
        sent with it as a project, each file only if the coordinator lacks it; missing
        ones are refused here by the path you wrote unless ``allow_missing_files``; and
        the chosen scene's frame range, fps and cameras go with the job, so that the
        coordinator refuses a bad frame range, camera or scene name, or a scene without a
        camera, at submit. ``frames`` then defaults to the scene's range. ``on_inspect``
        sees Blender's description of the file; ``on_event(what, detail)`` hears the
        packing (``untraced``, ``layout`` once checked, ``uploaded``/``skipped`` per file,
        ``report`` with the bytes sent).
        """
        from parallel_pilot.client.render_project import pack_project, scene_facts

        packed = pack_project(self.connection, Path(scene), scene_name=scene_name,
                              camera=camera, allow_missing_files=allow_missing_files,
                              inspect=inspect, on_event=on_event)
        params: dict[str, Any] = {"project": packed.manifest}
        if packed.info:
            if on_inspect is not None:
                on_inspect(packed.info)
            facts = scene_facts(packed.info, scene_name)
            default_frames = facts.pop("default_frames", None)
            params.update(facts)
            if frames is None and default_frames is not None:
                frames = default_frames
        if on_event is not None:
            on_event("report", packed.report)
        overrides = {"frames": frames, "chunk": chunk, "engine": engine, "samples": samples,
                     "resolution": resolution, "format": format, "color_depth": color_depth,
                     "device": device, "camera": camera, "scene_name": scene_name,
                     "fps": fps}
        params.update({k: v for k, v in overrides.items() if v is not None})
        if allow_missing_files:
            params["allow_missing_files"] = True
        return self.submit("render", params, priority=priority, name=name or Path(scene).name,
                           requirements=requirements_from(requirements))

    # ------------------------------------------------------------ follow

    def jobs(self, state: str | None = None, limit: int | None = None) -> list[JobInfo]:
        """Jobs the user may see, newest first, optionally of one state."""
        params = {k: v for k, v in (("state", state), ("limit", limit)) if v is not None}
        return self.connection.call("GET", "/jobs", JobList, params=params or None).jobs

    def job(self, job_id: int) -> JobInfo:
        """One job with its task counts, progress and ETA."""
        return self.connection.call("GET", f"/jobs/{int(job_id)}", JobInfo)

    def tasks(self, job_id: int) -> list[TaskInfo]:
        """The tasks of a job, in plan order."""
        return self.connection.call("GET", f"/jobs/{int(job_id)}/tasks", TaskList).tasks

    def outputs(self, job_id: int) -> list[OutputInfo]:
        """The files a job produced so far (each task's and the job's own)."""
        return self.connection.call("GET", f"/jobs/{int(job_id)}/outputs", OutputList).outputs

    def logs(self, job_id: int, task_id: int | None = None, after: int = 0,
             limit: int | None = None, *, task: int | None = None) -> list[LogLine]:
        """Log lines of a job's tasks, oldest first; of one task when ``task`` (its number
        in the job, from 1, as the dashboard and ``pilot logs --task`` number tasks) or
        ``task_id`` (its id) is given. A task the job does not have raises
        ``TaskNotFound``.

        ``after`` is the ``id`` of the last line already seen (to follow a running job);
        all newer lines are fetched page by page unless ``limit`` caps them.
        """
        lines: list[LogLine] = []
        for _ in range(MAX_LOG_PAGES):
            want = LOG_PAGE_LINES if limit is None else min(LOG_PAGE_LINES, limit - len(lines))
            if want <= 0:
                break
            params: dict[str, Any] = {"after": after, "limit": want}
            if task_id is not None:
                params["task_id"] = task_id
            if task is not None:
                params["task"] = task
            page = self.connection.call("GET", f"/jobs/{int(job_id)}/logs", LogList,
                                        params=params).lines
            lines.extend(page)
            if len(page) < want:
                break
            after = page[-1].id
        return lines

    def cancel(self, job_id: int) -> JobInfo:
        """Cancel a job; its running tasks are told to stop at their next heartbeat."""
        return self.connection.call("POST", f"/jobs/{int(job_id)}/cancel", JobInfo)

    def retry(self, job_id: int) -> JobInfo:
        """Put a failed or cancelled job's unfinished tasks back in the queue."""
        return self.connection.call("POST", f"/jobs/{int(job_id)}/retry", JobInfo)

    def workers(self) -> list[WorkerInfo]:
        """Registered workers with their capabilities and live state."""
        return self.connection.call("GET", "/workers", WorkerList).workers

    def cancel_tasks(self, job_id: int, task_ids: Iterable[int]) -> TaskCancelled:
        """Cancel some tasks of a job (the others go on); running ones stop at their next
        heartbeat. Returns which were still open and are now cancelled, and the job."""
        body = TaskCancel(task_ids=list(task_ids))
        return self.connection.call("POST", f"/jobs/{int(job_id)}/tasks/cancel",
                                    TaskCancelled, body=body)

    def wait(
        self,
        job_id: int,
        *,
        progress: Callable[[JobInfo], None] | bool | None = None,
        on_update: Callable[[JobInfo], None] | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        timeout: float | None = None,
    ) -> JobInfo:
        """Poll the job until it is completed, failed or cancelled and return it.

        ``progress`` is a callback that sees the job at every poll, or ``True`` for a
        progress bar (rich, in a terminal or a Jupyter notebook; plain lines otherwise).
        ``on_update`` is another callback for every poll. Raises ``TimeoutError`` when
        ``timeout`` seconds pass first; a failed job is returned, not raised (look at
        ``state`` and ``error``).
        """
        if progress is True:
            from parallel_pilot.client.progress import JobProgressBar

            with JobProgressBar(job_id) as bar:
                return self.wait(job_id, progress=bar.update, on_update=on_update,
                                 poll_seconds=poll_seconds, timeout=timeout)
        callbacks = [c for c in (progress, on_update) if callable(c)]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.connection.call("GET", f"/jobs/{int(job_id)}", JobInfo,
                                        timeout=POLL_TIMEOUT)
            for callback in callbacks:
                callback(info)
            if info.state.finished:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {job_id} is still {info.state} after {timeout:g} s "
                    f"({info.tasks_done}/{info.tasks_total} tasks done)"
                )
            pause = poll_seconds
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            self._sleep(pause)

    def watch(self, job_id: int, *, timeout: float | None = None) -> Iterator[JobInfo]:
        """The job each time it changes, pushed by the coordinator (server-sent events,
        ``GET /jobs/{id}/events``), until it has finished; the last one yielded is final.

        Streams that end early (the server's time limit, a restart) are reopened. Raises
        ``TimeoutError`` when ``timeout`` seconds pass before the job finishes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        failing_since: float | None = None
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s")
            params = {"seconds": min(left, WATCH_STREAM_SECONDS) if left
                      else WATCH_STREAM_SECONDS}
            try:
                for event, data in self.connection.events(f"/jobs/{int(job_id)}/events",
                                                          params=params):
                    if event == "job":
                        info = JobInfo.model_validate(data["job"])
                        yield info
                        if info.state.finished:
                            return
                    elif event == "gone":
                        raise error_from_body(404, data)
                failing_since = None
            except httpx.TransportError as exc:
                # dropped: reopen (the server sends the whole job again), for a while
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.connection.retry_seconds:
                    raise ServerUnavailable(f"lost the event stream of job {job_id}: "
                                            f"{exc}") from None
                self._sleep(1.0)

    def finished_tasks(self, job_id: int, *, since: float | None = None,
                       seconds: float = WATCH_STREAM_SECONDS,
                       read_timeout: float | None = None) -> Iterator[FinishedTasksEvent]:
        """One stream of a job's tasks as they finish, with their results, pushed by the
        coordinator (``GET /jobs/{id}/events?tasks=finished``): ``("job", (state,
        error))`` first and on every change of the job's state, ``("tasks", (tasks,
        since))`` with tasks not sent before, ``("done", None)`` last, once the job has
        finished and all its finished tasks were sent. A stream that ends without
        ``done`` (its ``seconds``, a restart) is the caller's to reopen with the last
        ``since``: only tasks finished shortly before it come again. A job the caller
        may not see raises ``JobNotFound``; a dropped stream the httpx error."""
        params: dict[str, Any] = {"tasks": "finished", "seconds": seconds}
        if since is not None:
            params["since"] = since
        extra = {} if read_timeout is None else {"read_timeout": read_timeout}
        for event, data in self.connection.events(f"/jobs/{int(job_id)}/events",
                                                  params=params, **extra):
            if event == "job":
                yield "job", (JobState(data["state"]), data.get("error"))
            elif event == "tasks":
                tasks = [TaskInfo.model_validate(t) for t in data["tasks"]]
                yield "tasks", (tasks, data.get("since"))
            elif event == "done":
                yield "done", None
                return
            elif event == "gone":
                raise error_from_body(404, data)

    # ------------------------------------------------------------ blobs

    def upload(self, path: Path, *, on_progress: Callable[[int], None] | None = None) -> str:
        """Upload a file as a blob unless the coordinator already has one with the same
        SHA-256 (it is asked first); returns the SHA-256, the name jobs use for it."""
        return self.connection.upload_blob(Path(path), sha256_file(Path(path)),
                                           on_progress=on_progress)

    def upload_bytes(self, data: bytes) -> str:
        """Upload bytes as a blob unless the coordinator has them; returns the SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        with tempfile.TemporaryDirectory(prefix="pilot-upload-") as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            return self.connection.upload_blob(path, sha)

    def download_bytes(self, sha256: str) -> bytes:
        """A blob's bytes (checked against its SHA-256), e.g. a result file."""
        with tempfile.TemporaryDirectory(prefix="pilot-download-") as tmp:
            path = self.connection.download_blob(sha256, Path(tmp) / "blob")
            return path.read_bytes()

    # ------------------------------------------------------------ results

    def outputs_to_download(self, job_id: int, *, everything: bool = False
                            ) -> tuple[list[OutputInfo], list[OutputInfo]]:
        """The outputs ``download`` fetches, each path once, and those it leaves out: a
        render job's preview, metadata and video copies of its frames (``preview/``,
        ``meta/``, ``video-frames/``), unless ``everything``."""
        kind = self.job(job_id).kind
        return select_downloads(kind, self.outputs(job_id), everything=everything)

    def download(
        self,
        job_id: int,
        out_dir: Path,
        *,
        everything: bool = False,
        outputs: Sequence[OutputInfo] | None = None,
        on_file: Callable[[OutputInfo, Path, bool], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Download the job's outputs to ``out_dir/<path>``; returns the local paths.

        Each path is fetched once (its latest output). A file already there with the same
        SHA-256 is not fetched or rewritten. A render job's files for the farm (its
        preview, metadata and the video's copies of EXR frames) are left out unless
        ``everything``; ``outputs`` (from ``outputs_to_download``) skips listing them
        again. Every path is checked to stay inside ``out_dir`` before anything is
        written. ``on_file`` is told of each file and whether it was downloaded (True) or
        already up to date (False).
        """
        if outputs is None:
            outputs, _ = self.outputs_to_download(job_id, everything=everything)
        root = Path(out_dir)
        targets = [(output, safe_destination(root, output.path)) for output in outputs]
        written: list[Path] = []
        for output, dest in targets:
            fetched = False
            if not (dest.is_file() and dest.stat().st_size == output.size
                    and sha256_file(dest) == output.sha256):
                self.connection.download_blob(output.sha256, dest, on_progress=on_bytes)
                fetched = True
            written.append(dest)
            if on_file is not None:
                on_file(output, dest, fetched)
        return written

    def submit_train(
        self,
        spec: Path,
        *,
        files: Mapping[str, Path] | Iterable[Path] = (),
        workers: int = 4,
        inner_steps: int = 50,
        rounds: int | None = None,
        total_steps: int | None = None,
        batch_size: int | None = None,
        inner_lr: float | None = None,
        outer_lr: float | None = None,
        outer_momentum: float | None = None,
        seed: int | None = None,
        quorum: int | None = None,
        round_deadline_seconds: float | None = None,
        options: Mapping[str, Any] | None = None,
        name: str | None = None,
        priority: int = 0,
        on_upload: Callable[[str, Path], None] | None = None,
        requirements: RequirementsLike = None,
    ) -> JobInfo:
        """Train the model of the spec file ``spec`` with DiLoCo across ``workers`` workers
        (kind ``train``): each round every worker takes ``inner_steps`` AdamW steps on its
        shard, then the weight changes are averaged and applied by an outer Nesterov step.

        The spec defines ``build_model()``, ``shard_batches(shard, num_shards, batch_size,
        seed)``, ``compute_loss(model, batch)`` and optionally ``evaluate(model)``. ``files``
        are data files placed next to it (a mapping of name to local path, or paths named
        relative to the current directory); each is uploaded only if the coordinator lacks
        it. Give ``rounds`` or ``total_steps`` (inner steps over all workers). A round goes
        ahead with ``quorum`` deltas once ``round_deadline_seconds`` passed since its first
        delta arrived. ``options`` holds further parameters of kinds/train/params.py
        (``weight_decay``, ``grad_clip``, ``nesterov``, ``max_delta_norm``, ...). The results
        are ``model.safetensors`` and ``metrics.csv`` (``download``).
        """
        spec = Path(spec)
        if not spec.is_file():
            raise InvalidInput(f"no such file: {spec}")
        data: dict[str, str] = {}
        for job_name, path in name_files(files).items():
            if on_upload is not None:
                on_upload(job_name, path)
            data[job_name] = self.upload(path)
        if on_upload is not None:
            on_upload(spec.name, spec)
        params: dict[str, Any] = {"spec": self.upload(spec), "spec_file": spec.name,
                                  "files": data, "workers": workers,
                                  "inner_steps": inner_steps}
        given = {"rounds": rounds, "total_steps": total_steps, "batch_size": batch_size,
                 "inner_lr": inner_lr, "outer_lr": outer_lr, "outer_momentum": outer_momentum,
                 "seed": seed, "quorum": quorum, "round_deadline_seconds": round_deadline_seconds}
        params.update({k: v for k, v in given.items() if v is not None})
        params.update(options or {})
        return self.submit("train", params, priority=priority, name=name or spec.name,
                           requirements=requirements_from(requirements))


def _with_sandbox(requirements: RequirementsLike, sandbox: bool) -> dict[str, Any]:
    """``requirements`` plus a sandbox when ``require_sandbox`` asked for one."""
    fields = requirements_from(requirements)
    return {**fields, "sandbox": True} if sandbox else fields
