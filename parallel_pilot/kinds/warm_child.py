"""The child side of a reused child (``kinds/warm.py`` is the worker side): one serve loop
for the ``python`` and ``train`` children, each with its own per-task handler.

The protocol on the pipe: the worker writes one task folder name per line on the child's
stdin; the child runs the task laid out in ``ROOT/<tasks dir>/<name>`` and ends its output
with one ``<done marker> <name> <status>`` line on stdout. The loop ends when stdin
closes, or when the worker (``--worker-pid PID``) is no longer the child's parent.

Standard library only: ``runner.py`` runs as a plain file and loads this one by path, so
the user's code starts without the package's imports.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PARENT_CHECK_SECONDS = 0.5  # how often a reused child checks that its worker still lives


def serve_args(argv: Sequence[str]) -> tuple[Path, int | None] | None:
    """``--serve ROOT [--worker-pid PID]`` (``argv`` without the program) -> (root, pid);
    None when the child is not asked to serve."""
    if len(argv) < 2 or argv[0] != "--serve":
        return None
    worker_pid = int(argv[3]) if len(argv) > 3 and argv[2] == "--worker-pid" else None
    return Path(argv[1]), worker_pid


def serve(root: Path, run_task: Callable[[Path], int], *, tasks_dir: str, done_marker: str,
          worker_pid: int | None = None) -> int:
    """Run the task folders named on stdin one after another with ``run_task`` (the task
    folder -> its exit status), ending each with a done line; returns 0 when stdin closes."""
    commands = os.fdopen(os.dup(0), "r")
    sys.stdin = open(os.devnull)  # the user's code must not read the commands
    if worker_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(worker_pid,), daemon=True).start()
    for line in commands:
        name = line.strip()
        if not name:
            continue
        status = run_task(root / tasks_dir / name)
        done = f"{done_marker} {name} {status}\n"
        # the marker ends the task on both pipes, so the worker has all of its stderr
        # (a load failure's reason) before it reads the outcome; fd 2, whatever the
        # task did to sys.stderr
        sys.stderr.flush()
        os.write(2, done.encode())
        sys.stdout.write(done)
        sys.stdout.flush()
    return 0


def _exit_with_parent(parent: int) -> None:
    """A worker killed outright leaves its children to init: end with it, even in the
    middle of a long task (the closed stdin is only noticed between tasks)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)
