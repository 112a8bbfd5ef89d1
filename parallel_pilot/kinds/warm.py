"""Child processes reused across the tasks of one job on a worker (``python`` and ``train``).

Starting a child costs a task more than a small task itself (Python and cloudpickle about
50-100 ms; torch and a training spec about 1.5 s), so a worker keeps one child per running
task slot of a job (or of an ``Executor`` session) and hands it the next task of the same
job; code of different users never shares a child. A child serves ``COMMAND --serve DIR``
(its side is ``kinds/warm_child.py``, one loop for every kind): it reads task folder names
(under ``DIR/<tasks_dir>``) from stdin, runs each and ends each with a
``<done marker> <name> <status>`` line on stdout. It lives in a directory of its own,
bound once by bwrap when the worker sandboxes; each task gets a folder under it.
A child that was stopped, timed out or died is killed and never reused; idle ones are
killed after ``idle_seconds`` or when more than ``max_idle`` wait. A child sees only the
GPUs of the attempt it was started for (``kinds.gpu_env``), so it is reused only for
attempts given the same GPUs.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from parallel_pilot.kinds.gpu_env import with_gpus
from parallel_pilot.kinds.process import end_group, kill_group, spawn_child
from parallel_pilot.kinds.sandbox import bwrap_argv

IDLE_SECONDS = 30.0  # an idle child is killed after this many seconds without a task
MAX_IDLE = 8  # idle children kept at most per pool (per worker process)
WAIT_STEP = 0.01  # seconds between checks of the stop event while a task runs
STDERR_WAIT_SECONDS = 5.0  # a task's last stderr lines may trail its done line this long
STDERR_KEEP = 64 * 1024  # characters of a task's stderr kept for its failure reason


@dataclass
class TaskOutcome:
    status: int | None  # the child's status for the task; None if it did not finish
    stderr: str
    stopped: bool = False
    timed_out: bool = False
    exited: int | None = None  # the child's exit code when it died


@dataclass(frozen=True)
class ChildCommand:
    """How to start one kind's serving child and read its answers."""

    argv: tuple[str, ...]  # ``--serve DIR`` (and ``--worker-pid PID``) are appended
    done_marker: str  # starts the line that ends a task's output
    tasks_dir: str = "tasks"  # the task folders, under the child's directory
    prefix: str = "pilot-child-"  # of the child's directory name
    env: Mapping[str, str] = field(default_factory=dict)  # defaults the worker's env overrides


PoolKey = tuple[str, bool, tuple[int, ...] | None]  # (reuse key, sandboxed, GPUs)


class WarmRunner:
    """One serving child with its directory."""

    def __init__(self, command: ChildCommand, key: PoolKey, parent: Path | None,
                 sandbox: bool, env: Mapping[str, str]) -> None:
        self.key = key
        self.command = command
        self.dir = Path(tempfile.mkdtemp(prefix=command.prefix,
                                         dir=str(parent) if parent else None)).resolve()
        (self.dir / command.tasks_dir).mkdir()
        argv = [*command.argv, "--serve", str(self.dir)]
        if sandbox:
            argv = bwrap_argv(argv, self.dir)  # --die-with-parent
        else:
            argv += ["--worker-pid", str(os.getpid())]  # it ends when this process dies
        self.proc = spawn_child(argv, cwd=self.dir, env={**command.env, **env},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.idle_since = time.monotonic()
        self._done: queue.Queue[tuple[str, int]] = queue.Queue()
        self._stderr_done: queue.Queue[str] = queue.Queue()  # names whose stderr is all read
        self._sink: Callable[[str], None] = lambda line: None
        self._stderr: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def task_dir(self, name: str) -> Path:
        path = self.dir / self.command.tasks_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, name: str, *, log: Callable[[str], None], stop_event: threading.Event,
            timeout_seconds: float | None) -> TaskOutcome:
        """Run the task folder ``name``; output lines go to ``log`` while it runs."""
        with self._lock:
            self._sink, self._stderr = log, []
        started = time.monotonic()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{name}\n".encode())
            self.proc.stdin.flush()
        except OSError:
            return TaskOutcome(None, self._stderr_text(), exited=self.proc.poll())
        while True:
            try:
                done_name, status = self._done.get(timeout=WAIT_STEP)
            except queue.Empty:
                if stop_event.is_set():
                    self.close()
                    return TaskOutcome(None, self._stderr_text(), stopped=True)
                if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
                    self.close()
                    return TaskOutcome(None, self._stderr_text(), timed_out=True)
                if not self.alive() and self._done.empty():
                    return TaskOutcome(None, self._stderr_text(), exited=self.proc.returncode)
                continue
            if done_name == name:
                self._await_stderr(name)
                with self._lock:
                    self._sink = lambda line: None
                return TaskOutcome(status, self._stderr_text())

    def _await_stderr(self, name: str) -> None:
        """Wait (bounded) until the stderr reader has seen the task's end marker, so the
        outcome carries every line the task wrote there."""
        deadline = time.monotonic() + STDERR_WAIT_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self._stderr_done.get(timeout=left) == name:
                    return
            except queue.Empty:
                return

    def close(self) -> None:
        """Kill the child and remove its directory."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.alive():
            kill_group(self.proc)
        end_group(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        marker_text = self.command.done_marker
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            before, marker, rest = line.partition(marker_text)
            if before:
                self._emit(before)
            if marker:
                name, _, status = rest.strip().rpartition(" ")
                self._done.put((name, int(status)))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        marker_text = self.command.done_marker
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            line, marker, rest = line.partition(marker_text)
            if marker:
                self._stderr_done.put(rest.strip().rpartition(" ")[0])
                if not line:  # a task's last line without a newline runs into the marker
                    continue
            with self._lock:
                if sum(len(s) for s in self._stderr) < STDERR_KEEP:
                    self._stderr.append(line)
            self._emit(f"[stderr] {line}")

    def _emit(self, line: str) -> None:
        with self._lock:
            sink = self._sink
        sink(line)

    def _stderr_text(self) -> str:
        with self._lock:
            return "\n".join(self._stderr)


class RunnerPool:
    """Idle children of one command by (reuse key, sandboxed); ``take`` one or start one,
    ``give_back``."""

    def __init__(self, command: ChildCommand, *, idle_seconds: float = IDLE_SECONDS,
                 max_idle: int = MAX_IDLE) -> None:
        self.command = command
        self.idle_seconds, self.max_idle = idle_seconds, max_idle
        self._idle: list[WarmRunner] = []
        self._lock = threading.Lock()
        # children are started from one long-lived thread: their PR_SET_PDEATHSIG (and
        # bwrap's --die-with-parent) fires when the *thread* that started them ends, and a
        # task's thread may end with the task
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix=f"{command.prefix}spawn")

    def take(self, reuse_key: str, sandbox: bool, parent: Path | None,
             gpus: tuple[int, ...] | None = None) -> WarmRunner:
        """An idle child started for the same ``reuse_key`` (a job, or the client's
        session) and the same ``gpus`` (the attempt's: the child sees only those), else a
        new one."""
        key: PoolKey = (reuse_key, sandbox, gpus)
        with self._lock:
            self._expire()
            for runner in self._idle:
                if runner.key == key and runner.alive():
                    self._idle.remove(runner)
                    return runner
        return self._spawner.submit(WarmRunner, self.command, key, parent, sandbox,
                                    with_gpus(os.environ, gpus)).result()

    def give_back(self, runner: WarmRunner) -> None:
        if not runner.alive():
            runner.close()
            return
        runner.idle_since = time.monotonic()
        with self._lock:
            self._idle.append(runner)
            self._expire()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for runner in idle:
            runner.close()

    def _expire(self) -> None:
        now = time.monotonic()
        keep = [r for r in self._idle
                if r.alive() and now - r.idle_since < self.idle_seconds]
        keep = keep[-self.max_idle:]
        for runner in self._idle:
            if runner not in keep:
                runner.close()
        self._idle = keep
