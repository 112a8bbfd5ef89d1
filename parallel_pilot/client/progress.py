"""A progress bar for ``Client.wait(job, progress=True)`` and the ``Executor``: rich in a
terminal or a Jupyter notebook, one plain line per change anywhere else (a log file)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from parallel_pilot.core.protocol import JobInfo


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (rich then draws into the notebook)."""
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None)
    kernel = get_ipython() if callable(get_ipython) else None
    return kernel is not None and "IPKernelApp" in getattr(kernel, "config", {})


class JobProgressBar:
    """``with JobProgressBar(job_id) as bar: client.wait(job_id, progress=bar.update)``."""

    def __init__(self, job_id: int, *, stream: TextIO | None = None) -> None:
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self.live = in_notebook() or self.stream.isatty()
        self._last = ""
        self._progress: Progress | None = None
        self._bar: TaskID | None = None
        if self.live:
            console = Console(file=self.stream, force_jupyter=in_notebook() or None)
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.fields[done]}/{task.fields[total_tasks]} tasks"),
                TimeElapsedColumn(), console=console,
            )

    def __enter__(self) -> JobProgressBar:
        if self._progress is not None:
            self._progress.start()
            self._bar = self._progress.add_task(f"job {self.job_id}", total=1, done=0,
                                                total_tasks=0)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, info: JobInfo) -> None:
        """Show the job's state and tasks done."""
        total = max(info.tasks_total, 1)
        if self._progress is not None and self._bar is not None:
            self._progress.update(self._bar, total=total, completed=info.progress * total,
                                  description=f"job {info.id} {info.state}",
                                  done=info.tasks_done, total_tasks=info.tasks_total)
            return
        line = f"job {info.id} {info.state}: {info.tasks_done}/{info.tasks_total} tasks"
        if line != self._last:
            self._last = line
            print(line, file=self.stream, flush=True)
