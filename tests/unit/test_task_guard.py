"""The task guard (``kinds/guard.py``) with real processes: when its pipe closes (the
worker died) it kills every group still watched, and a guard started again after the
first one died learns the groups that still run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psutil

from parallel_pilot.kinds.guard import Guard

GONE_SECONDS = 10.0


def _group() -> subprocess.Popen[bytes]:
    """A process group like a task's: a shell and the sleep it started."""
    return subprocess.Popen(["sh", "-c", "sleep 317 & sleep 317"], start_new_session=True)


def _gone(procs: list[psutil.Process]) -> bool:
    deadline = time.monotonic() + GONE_SECONDS
    while time.monotonic() < deadline:
        if not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs):
            return True
        time.sleep(0.05)
    return False


def _members(leader: subprocess.Popen[bytes]) -> list[psutil.Process]:
    deadline = time.monotonic() + GONE_SECONDS
    while time.monotonic() < deadline:
        below = psutil.Process(leader.pid).children()
        if len(below) == 2:
            return [psutil.Process(leader.pid), *below]
        time.sleep(0.02)
    raise AssertionError("the group's sleeps did not start")


def test_the_guard_kills_watched_groups_when_its_pipe_closes() -> None:
    guard = Guard()
    first, second, forgotten = _group(), _group(), _group()
    try:
        members = [*_members(first), *_members(second)]
        kept = _members(forgotten)
        guard.watch(first.pid)
        guard.watch(forgotten.pid)
        guard.forget(forgotten.pid)
        old = psutil.Process(guard.pid)  # type: ignore[arg-type]
        old.send_signal(signal.SIGKILL)  # the guard itself dies: the next watch starts one
        old.wait(10)
        guard.watch(second.pid)
        assert guard.pid is not None and guard.pid != old.pid
        new = psutil.Process(guard.pid)
        assert guard._proc is not None and guard._proc.stdin is not None
        guard._proc.stdin.close()  # what the kernel does when the worker dies
        assert _gone(members), [p.cmdline() for p in members if p.is_running()]
        new.wait(10)
        assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in kept)
    finally:
        for proc in (first, second, forgotten):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the groups this test started
            proc.wait(10)
