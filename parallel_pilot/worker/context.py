"""``TaskContext``: what one leased task may do on this worker (the kinds' ``RunContext``).

It owns the task's fresh working directory (made when a kind first asks for it, so a
task that needs none costs no file system calls; removed afterwards), its inputs (through
the blob cache, pinned while the task runs), its progress and buffered log lines (carried
away by the worker's syncs), its output uploads, its stop event with the reason, and the
GPUs the attempt was given.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from pydantic import ValidationError

from parallel_pilot.core.folders import remove_tree
from parallel_pilot.core.project import sha256_file
from parallel_pilot.core.protocol import OutputRequest, TaskLease
from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.base import describe_validation
from parallel_pilot.worker.cache import BlobCache
from parallel_pilot.worker.link import CoordinatorLink
from parallel_pilot.worker.log_buffer import LogBuffer
from parallel_pilot.worker.state import StopReason

__all__ = ["StopReason", "TaskContext", "remove_tree"]

MAX_MESSAGE_CHARS = 1000  # characters of a progress message (the wire's limit)
WORKDIR_PREFIX = "pilot-task-"


class TaskContext:
    """The ``RunContext`` of one attempt. Call ``close()`` when the task is over."""

    def __init__(self, task: TaskLease, link: CoordinatorLink, cache: BlobCache,
                 work_root: Path | None = None, logs: LogBuffer | None = None,
                 gpus: tuple[int, ...] = (), sandbox: bool = False, render_sandbox: bool = False,
                 private_paths: tuple[Path, ...] = ()) -> None:
        self.task = task
        # the worker's GPUs this attempt runs on (its children see only these; none: a
        # CPU task, whose children see no GPU)
        self.gpus: tuple[int, ...] | None = gpus
        self.sandbox = sandbox  # commands run inside bwrap (kinds.sandbox)
        self.render_sandbox = render_sandbox  # Blender runs in bwrap (kinds.render.sandbox)
        # folders of the worker a sandboxed task must not see (home, blob cache, work root)
        self.private_paths = private_paths
        self.link = link
        self.cache = cache
        self.logs = logs or LogBuffer()
        self.stop_event = threading.Event()
        self.stop_reason: StopReason | None = None
        self.stop_detail: str | None = None
        self._lock = threading.Lock()
        self._progress: float | None = None
        self._message: str | None = None
        self._pinned: list[str] = []
        self.outputs: dict[str, str] = {}  # output path -> SHA-256, as uploaded
        self._uploaded: set[str] = set()  # blobs sent for this attempt
        self.work_root = work_root
        self._workdir: Path | None = None

    @property
    def workdir(self) -> Path:
        """The task's own fresh folder, made on first use."""
        with self._lock:
            if self._workdir is None:
                if self.work_root is not None:
                    self.work_root.mkdir(parents=True, exist_ok=True)
                self._workdir = Path(tempfile.mkdtemp(
                    prefix=f"{WORKDIR_PREFIX}{self.task.task_id}-{self.task.attempt}-",
                    dir=str(self.work_root) if self.work_root is not None else None,
                )).resolve()
            return self._workdir

    @workdir.setter
    def workdir(self, path: Path) -> None:
        with self._lock:
            self._workdir = path

    # ------------------------------------------------------------ RunContext

    def input_path(self, name: str) -> Path:
        """A read-only path to the input ``name`` in the blob cache, fetched if needed."""
        sha256 = self.task.inputs.get(name)
        if sha256 is None:
            have = ", ".join(sorted(self.task.inputs)) or "none"
            raise InvalidInput(
                f"task {self.task.task_id} has no input named {name!r} (its inputs: {have})"
            )
        path = self.cache.acquire(sha256, self.link.download_blob)
        with self._lock:
            self._pinned.append(sha256)
        return path

    def job_outputs(self, prefix: str = "") -> dict[str, str]:
        """Outputs of this task's job so far (path -> SHA-256), e.g. ``frames/``."""
        listing = self.link.job_outputs(self.task.task_id, self.task.attempt, prefix)
        return {o.path: o.sha256 for o in listing.outputs}

    def fetch_blob(self, sha256: str) -> Path:
        """A read-only path to any blob (in the cache, pinned while the task runs)."""
        path = self.cache.acquire(sha256, self.link.download_blob)
        with self._lock:
            self._pinned.append(sha256)
        return path

    def copy_input(self, name: str, dest: Path) -> Path:
        """Copy the input ``name`` to ``dest`` (relative paths are inside the workdir),
        as a writable file; ``dest`` may not leave the working directory."""
        target = self.inside_workdir(dest)
        source = self.input_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise InvalidInput(f"cannot copy input {name!r} over the directory {dest}")
        # copyfile, not copy: the copy gets a normal mode, not the cache's read-only one
        shutil.copyfile(source, target)
        return target

    def link_input(self, name: str, dest: Path) -> Path:
        """Put the input ``name`` at ``dest`` (inside the workdir): a hard link to the
        cached blob (read-only, as in the cache) where both lie on one file system, else a
        copy. Nothing may write through it: the cache would change under other tasks."""
        target = self.inside_workdir(dest)
        source = self.input_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
            os.chmod(target, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        return target

    def progress(self, fraction: float | None, message: str | None = None) -> None:
        with self._lock:
            if fraction is not None:
                self._progress = min(1.0, max(0.0, float(fraction)))
            if message is not None:
                self._message = message[:MAX_MESSAGE_CHARS]

    def log(self, line: str) -> None:
        self.logs.append(line)

    def upload_output(self, path: str, file: Path) -> str:
        """Upload ``file`` as the job output ``path``; returns its SHA-256. The upload
        names this attempt (the coordinator takes outputs only from uploads for it)."""
        file = Path(file)
        if not file.is_file():
            raise InvalidInput(f"output {path!r}: {file} is not a file")
        size = file.stat().st_size
        try:
            request = OutputRequest(path=path, sha256="0" * 64, size=size)
        except ValidationError as exc:
            raise InvalidInput(f"output path {path!r}: {describe_validation(exc)}") from None
        sha256 = sha256_file(file)
        with self._lock:
            sent = sha256 in self._uploaded
        if not sent:  # the same bytes under a second path: granted to this attempt already
            self.link.upload_output_blob(file, sha256, self.task.task_id, self.task.attempt)
        request = request.model_copy(update={"sha256": sha256})
        self.link.output(self.task.task_id, self.task.attempt, request)
        with self._lock:
            self._uploaded.add(sha256)
            self.outputs[path] = sha256
        return sha256

    # ------------------------------------------------------------ worker side

    def snapshot(self) -> tuple[float | None, str | None]:
        """The latest progress fraction and message, for a sync."""
        with self._lock:
            return self._progress, self._message

    def request_stop(self, reason: StopReason, detail: str | None = None) -> bool:
        """Set the stop event; the first reason wins. Returns whether this call set it."""
        with self._lock:
            if self.stop_reason is not None:
                return False
            self.stop_reason = reason
            self.stop_detail = detail
        self.stop_event.set()
        return True

    def inside_workdir(self, dest: Path | str) -> Path:
        """``dest`` resolved against the working directory, refused if it leaves it."""
        candidate = Path(dest)
        if not candidate.is_absolute():
            candidate = self.workdir / candidate
        resolved = candidate.resolve()
        if resolved == self.workdir or self.workdir not in resolved.parents:
            raise InvalidInput(f"{dest} is not a file path inside the task's working directory")
        return resolved

    def close(self) -> None:
        """Unpin the inputs and remove the working directory (if one was made)."""
        with self._lock:
            pinned, self._pinned = self._pinned, []
            workdir, self._workdir = self._workdir, None
        for sha256 in pinned:
            self.cache.release(sha256)
        if workdir is not None:
            remove_tree(workdir)

    def __enter__(self) -> TaskContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
