"""A live progress bar for a job (tasks done/total, running workers, ETA) on stderr."""

from __future__ import annotations

from collections.abc import Callable

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from parallel_pilot.client.cli.common import duration, err_console
from parallel_pilot.client.sdk import Client
from parallel_pilot.core.protocol import JobInfo


def job_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]}/{task.fields[total_tasks]} tasks"),
        TextColumn("{task.fields[workers]} workers"),
        TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def follow(client: Client, job_id: int, *, timeout: float | None = None, show: bool = True,
           check: Callable[[], None] | None = None) -> JobInfo:
    """Wait for the job to finish, drawing a progress bar unless ``show`` is False.

    ``check`` runs at every poll and may raise to give up (e.g. the local workers died).
    """
    if not show:
        return client.wait(job_id, timeout=timeout,
                           on_update=None if check is None else lambda info: check())
    with job_progress() as progress:
        bar = progress.add_task(f"job {job_id}", total=None, done=0, total_tasks=0,
                                workers=0, eta="ETA -")

        def update(info: JobInfo) -> None:
            if check is not None:
                check()
            total = max(info.tasks_total, 1)
            eta = "ETA -" if info.eta_seconds is None else f"ETA {duration(info.eta_seconds)}"
            if info.state.finished:
                eta = ""  # the description already says how it ended
            elif info.waiting_reason:  # no online worker can take its tasks: say why
                eta = info.waiting_reason
            progress.update(
                bar, total=total, completed=min(info.progress, 1.0) * total,
                description=f"job {job_id} {info.state}", done=info.tasks_done,
                total_tasks=info.tasks_total, workers=info.active_workers, eta=eta,
            )

        progress.update(bar, total=1)
        return client.wait(job_id, on_update=update, timeout=timeout)
