"""The ``python`` kind's reused children: one ``runner.py --serve`` child per running task
slot of a job or of an ``Executor`` session (its jobs carry a random session key), kept by
the worker-wide ``POOL`` under the rules of ``kinds/warm.py``."""

from __future__ import annotations

import sys
from pathlib import Path

from parallel_pilot.kinds.python.calls import DONE_MARKER, TASKS_DIR
from parallel_pilot.kinds.warm import ChildCommand, TaskOutcome, WarmRunner
from parallel_pilot.kinds.warm import RunnerPool as _Pool

__all__ = ["POOL", "RUNNER", "RunnerPool", "TaskOutcome", "WarmRunner"]

RUNNER = Path(__file__).with_name("runner.py")  # run as a file: the child skips our imports
COMMAND = ChildCommand(argv=(sys.executable, str(RUNNER)), done_marker=DONE_MARKER,
                       tasks_dir=TASKS_DIR, prefix="pilot-python-")


class RunnerPool(_Pool):
    """The pool of ``runner.py --serve`` children."""

    def __init__(self) -> None:
        super().__init__(COMMAND)


POOL = RunnerPool()  # the worker process's reused children
