"""Running a child process for a task: own process group, output captured with a size cap,
killed at once when the task is told to stop or runs past its time limit.

``spawn_child`` is the one way a worker starts a task's process (commands, Blender, the
reused python and train children, bwrap): a session and process group of its own,
``PR_SET_PDEATHSIG`` = SIGKILL so it dies with the worker, and its group told to the
worker's guard (``kinds/guard.py``), which kills the whole group (what the child started
too) when the worker dies. ``end_group`` kills what is left of a group once its child is
over, so a command's background processes never outlive its task.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallel_pilot.kinds.guard import GUARD

POLL_SECONDS = 0.05  # how often the stop event and time limit are checked
KILL_GRACE_SECONDS = 3.0  # seconds between SIGTERM and SIGKILL when stopping a child
_PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent thread ends


def _find_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once here in the parent: the forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def _die_with(parent: int) -> Callable[[], None]:
    """The pre-exec hook of a task child: SIGKILL when the worker's starting thread ends
    (Linux), and exit at once if the worker died already, before the hook ran."""

    def hook() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:
            os._exit(1)

    return hook


def spawn_child(argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a task's process (``subprocess.Popen`` arguments): in a new session and
    process group, killed by the kernel when the worker dies, its group watched by the
    guard. Start long-lived children from a long-lived thread: the death signal follows
    the thread that started the child. End with ``end_group``."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(
        argv, start_new_session=True, preexec_fn=_die_with(os.getpid()), **popen)
    GUARD.watch(proc.pid)
    return proc


def end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of the child's process group (its own children) once the child
    is over, and stop watching it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    GUARD.forget(proc.pid)


@dataclass
class ProcessResult:
    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    stopped: bool
    timed_out: bool
    seconds: float


class _CappedReader(threading.Thread):
    """Reads one pipe to the end, keeping the first ``cap`` bytes and passing lines on."""

    def __init__(self, pipe, cap: int, on_line: Callable[[str], None] | None) -> None:
        super().__init__(daemon=True)
        self.pipe, self.cap, self.on_line = pipe, cap, on_line
        self.kept = bytearray()
        self.truncated = False

    def run(self) -> None:
        for raw in iter(self.pipe.readline, b""):
            room = self.cap - len(self.kept)
            if room > 0:
                self.kept += raw[:room]
            if len(raw) > room:
                self.truncated = True
            if self.on_line is not None:
                self.on_line(raw.decode("utf-8", "replace").rstrip("\n"))
        self.pipe.close()

    def text(self) -> str:
        return self.kept.decode("utf-8", "replace")


def run_process(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stop_event: threading.Event,
    timeout_seconds: float | None = None,
    output_cap: int = 64 * 1024,
    on_stdout: Callable[[str], None] | None = None,
    on_stderr: Callable[[str], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` (never through a shell) and wait for it, stopping it on ``stop_event``."""
    started = time.monotonic()
    try:
        proc = spawn_child(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        return ProcessResult(127, "", f"cannot run {argv[0]!r}: {exc.strerror or exc}\n",
                             False, False, False, False, 0.0)
    out = _CappedReader(proc.stdout, output_cap, on_stdout)
    err = _CappedReader(proc.stderr, output_cap, on_stderr)
    out.start()
    err.start()
    stopped = timed_out = False
    while proc.poll() is None:
        if stop_event.wait(POLL_SECONDS):
            stopped = True
            break
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            timed_out = True
            break
    if proc.poll() is None:
        kill_group(proc)
    end_group(proc)  # what the command left running in the background goes too
    out.join(5)
    err.join(5)
    return ProcessResult(
        exit_code=proc.returncode if proc.returncode is not None else -9,
        stdout=out.text(), stderr=err.text(),
        stdout_truncated=out.truncated, stderr_truncated=err.truncated,
        stopped=stopped, timed_out=timed_out, seconds=time.monotonic() - started,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's whole process group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
