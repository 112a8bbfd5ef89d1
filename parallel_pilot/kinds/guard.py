"""The worker's guard: a small process that kills the worker's task process groups when
the worker dies, even by SIGKILL.

A task child gets ``PR_SET_PDEATHSIG`` (``kinds/process.py``), but that signal reaches
only the child itself: what the child started (``sh -c 'sleep 300 & …'``) would be left to
init and run on beside the retry. So every task child runs in a process group of its own,
and its group id is told to the guard, a child of the worker that reads those ids on a
pipe (``+PGID`` when a group starts, ``-PGID`` when the worker has ended it). The kernel
closes the pipe when the worker dies, however it dies; the guard then SIGKILLs every group
still listed and exits.

This file runs as a plain script (``python -I -S guard.py``), standard library only, so
the guard starts in a few milliseconds and holds nothing of the worker's.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

log = logging.getLogger(__name__)


class Guard:
    """The worker side: starts the guard on first use and tells it the groups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._failed = False  # the guard could not start: said once, not retried
        self._groups: set[int] = set()  # watched now: told again to a guard started anew

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def watch(self, pgid: int) -> None:
        """Kill the group ``pgid`` if this process dies before ``forget(pgid)``."""
        with self._lock:
            self._groups.add(pgid)
            self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        with self._lock:
            if pgid in self._groups:
                self._groups.discard(pgid)
                self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                log.warning("the task guard exited; starting another")
            # a new guard learns every group still running, not only this one
            line = "".join(f"+{pgid}\n" for pgid in self._groups if f"+{pgid}\n" != line) + line
        proc = self._start()
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode())
            proc.stdin.flush()
        except OSError as exc:
            log.warning("the task guard is gone (%s); task processes may outlive a "
                        "killed worker", exc)
            self._proc, self._failed = None, True

    def _start(self) -> subprocess.Popen[bytes] | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._failed:
            return None
        try:
            # a session of its own: a Ctrl-C at the worker's terminal must not end the
            # guard before the worker has stopped its tasks
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                cwd="/",
            )
        except OSError as exc:
            log.warning("cannot start the task guard (%s); task processes may outlive a "
                        "killed worker", exc)
            self._proc, self._failed = None, True
        return self._proc


GUARD = Guard()  # this worker process's guard


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def main() -> int:
    """The guard's side: keep the listed groups; on end of input, kill them all."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        try:
            pgid = int(line[1:])
        except ValueError:
            continue
        if pgid <= 1:
            continue
        if line.startswith(b"+"):
            groups.add(pgid)
        elif line.startswith(b"-"):
            groups.discard(pgid)
    for pgid in groups:
        _kill_group(pgid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
