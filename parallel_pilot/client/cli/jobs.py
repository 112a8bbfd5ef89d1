"""Commands that follow and manage jobs: ``jobs``, ``show``, ``wait``, ``logs``, ``cancel``,
``retry``, ``download``, ``workers``."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from parallel_pilot.client.cli.common import (
    EXIT_ERROR,
    ago,
    connection_options,
    console,
    duration,
    err_console,
    json_option,
    pass_client,
    print_json,
)
from parallel_pilot.client.cli.progress import follow
from parallel_pilot.client.sdk import Client
from parallel_pilot.core.protocol import Capabilities, JobInfo, OutputInfo
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.core.units import human_bytes

MAX_FAILURES_SHOWN = 20  # failed tasks listed by `pilot show`


def _state_style(state: str) -> str:
    return {"completed": "green", "done": "green", "failed": "red", "cancelled": "yellow",
            "running": "cyan", "leased": "cyan", "busy": "cyan", "offline": "dim",
            "revoked": "red"}.get(state, "")


@click.command("jobs")
@click.option("--state", type=click.Choice([s.value for s in JobState]),
              help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(1, 10_000), help="At most this many jobs.")
@json_option
@connection_options
@pass_client
def jobs_command(client: Client, state: str | None, limit: int | None, as_json: bool) -> None:
    """List jobs, newest first."""
    jobs = client.jobs(state=state, limit=limit)
    if as_json:
        print_json({"jobs": [j.model_dump(mode="json") for j in jobs]})
        return
    if not jobs:
        console.print("no jobs")
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "KIND", "STATE", "TASKS", "PROGRESS", "WORKERS", "OWNER",
                   "CREATED"):
        table.add_column(column, justify="right" if column in ("ID", "TASKS") else "left")
    for job in jobs:
        style = _state_style(job.state)
        table.add_row(str(job.id), job.name, job.kind, f"[{style}]{job.state}[/]" if style
                      else str(job.state), f"{job.tasks_done}/{job.tasks_total}",
                      f"{job.progress:.0%}", str(job.active_workers), job.owner,
                      ago(job.created_at))
    console.print(table)


@click.command("show")
@click.argument("job_id", type=int, metavar="JOB")
@json_option
@connection_options
@pass_client
def show_command(client: Client, job_id: int, as_json: bool) -> None:
    """Show one job: state, task counts and failed tasks."""
    job = client.job(job_id)
    failures = [t for t in client.tasks(job_id) if t.state == TaskState.FAILED]
    if as_json:
        print_json({**job.model_dump(mode="json"),
                    "failures": [t.model_dump(mode="json") for t in failures]})
        return
    _print_job(job)
    if failures:
        console.print(f"\n[bold red]{len(failures)} failed task(s)[/]")
        for task in failures[:MAX_FAILURES_SHOWN]:
            console.print(f"  task {task.id} ({task.name}), {task.failures} failure(s): "
                          f"{(task.error or '').strip()[:300]}")
        if len(failures) > MAX_FAILURES_SHOWN:
            console.print(f"  … and {len(failures) - MAX_FAILURES_SHOWN} more "
                          f"(pilot show {job_id} --json)")


def _print_job(job: JobInfo) -> None:
    style = _state_style(job.state)
    rows = [
        ("job", f"{job.id} {job.name}"),
        ("kind", job.kind),
        ("state", f"[{style}]{job.state}[/]" if style else str(job.state)),
        ("owner", job.owner),
        ("priority", str(job.priority)),
        ("tasks", f"{job.tasks_done}/{job.tasks_total} done ({job.progress:.0%})"),
        ("task states", ", ".join(f"{k} {v}" for k, v in sorted(job.task_counts.items()) if v)
         or "-"),
        ("workers", str(job.active_workers)),
        ("created", ago(job.created_at)),
    ]
    if job.started_at is not None:
        end = job.finished_at if job.finished_at is not None else time.time()
        rows.append(("ran for", duration(end - job.started_at)))
    if job.eta_seconds is not None and not job.state.finished:
        rows.append(("eta", duration(job.eta_seconds)))
    if job.error:
        rows.append(("error", f"[red]{job.error}[/]"))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


@click.command("wait")
@click.argument("job_id", type=int, metavar="JOB")
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after this many seconds.")
@json_option
@connection_options
@pass_client
def wait_command(client: Client, job_id: int, timeout: float | None, as_json: bool) -> None:
    """Wait for a job to finish; exit 0 only if it completed."""
    job = follow(client, job_id, timeout=timeout, show=not as_json)
    if as_json:
        print_json(job)
    else:
        report_finished(job)
    if job.state != JobState.COMPLETED:
        raise SystemExit(EXIT_ERROR)


def report_finished(job: JobInfo) -> None:
    if job.state == JobState.COMPLETED:
        console.print(f"job {job.id} [green]completed[/]: {job.tasks_done}/{job.tasks_total} "
                      "tasks done")
    else:
        reason = f": {job.error}" if job.error else ""
        err_console.print(f"job {job.id} [red]{job.state}[/]{reason}")


@click.command("logs")
@click.argument("job_id", type=int, metavar="JOB")
@click.option("--task", "task_id", type=int, help="Only this task's lines.")
@connection_options
@pass_client
def logs_command(client: Client, job_id: int, task_id: int | None) -> None:
    """Print the log lines of a job's tasks."""
    for line in client.logs(job_id, task_id=task_id):
        prefix = "" if task_id is not None else f"[task {line.task_id}] "
        click.echo(f"{prefix}{line.line}")


@click.command("cancel")
@click.argument("job_id", type=int, metavar="JOB")
@json_option
@connection_options
@pass_client
def cancel_command(client: Client, job_id: int, as_json: bool) -> None:
    """Cancel a job; running tasks stop at their next heartbeat."""
    job = client.cancel(job_id)
    if as_json:
        print_json(job)
    else:
        console.print(f"job {job.id} {job.state}")


@click.command("retry")
@click.argument("job_id", type=int, metavar="JOB")
@json_option
@connection_options
@pass_client
def retry_command(client: Client, job_id: int, as_json: bool) -> None:
    """Queue a failed or cancelled job's unfinished tasks again."""
    job = client.retry(job_id)
    if as_json:
        print_json(job)
    else:
        console.print(f"job {job.id} {job.state} ({job.tasks_total - job.tasks_done} tasks to go)")


@click.command("download")
@click.argument("job_id", type=int, metavar="JOB")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write into (default: pilot-job-JOB).")
@connection_options
@pass_client
def download_command(client: Client, job_id: int, out_dir: Path | None) -> None:
    """Download a job's outputs (a sweep: results.jsonl and items/<item>/…)."""
    out_dir = out_dir or Path(f"pilot-job-{job_id}")
    written: list[Path] = []
    present: list[Path] = []
    with Progress(TextColumn("download"), BarColumn(), DownloadColumn(),
                  console=err_console, transient=True) as progress:
        bar = progress.add_task("download", total=None)

        def on_file(output: OutputInfo, path: Path, fetched: bool) -> None:
            (written if fetched else present).append(path)
            if not fetched:
                progress.advance(bar, output.size)

        total = sum(o.size for o in client.outputs(job_id))
        progress.update(bar, total=total)
        client.download(job_id, out_dir, on_file=on_file,
                        on_bytes=lambda n: progress.advance(bar, n))
    for path in written:
        click.echo(str(path))
    summary = f"{len(written)} file(s) written to {out_dir}"
    if present:
        summary += f", {len(present)} already up to date"
    err_console.print(summary)


def sandboxed(caps: Capabilities) -> str:
    """What a worker runs in bwrap: ``render`` (Blender), ``cmd`` (sweep, python, train
    commands; ``--sandbox``), both, or ``none``."""
    what = [name for name, on in (("render", caps.render_sandbox), ("cmd", caps.sandbox))
            if on]
    return ",".join(what) or "none"


def render_gpus(caps: Capabilities) -> str:
    """The GPUs Cycles renders on, by backend: ``OPTIX:2``; ``-`` for none."""
    counts: dict[str, int] = {}
    for device in caps.render_devices:
        if device.type != "CPU":
            counts[device.type] = counts.get(device.type, 0) + 1
    return ",".join(f"{kind}:{n}" for kind, n in counts.items()) or "-"


@click.command("workers")
@json_option
@connection_options
@pass_client
def workers_command(client: Client, as_json: bool) -> None:
    """List registered workers."""
    workers = client.workers()
    if as_json:
        print_json({"workers": [w.model_dump(mode="json") for w in workers]})
        return
    if not workers:
        console.print("no workers")
        return
    table = Table(box=None, header_style="bold")
    # a GPU column only when a worker has a GPU Cycles renders on: 80 columns are tight
    gpus = any(render_gpus(w.capabilities) != "-" for w in workers)
    for column in ("ID", "NAME", "STATE", "CORES", "RAM", *(("GPU",) if gpus else ()),
                   "SLOTS", "KINDS", "SANDBOX", "TASKS", "DONE", "LAST SEEN"):
        table.add_column(column, no_wrap=column in ("RAM", "SANDBOX"))
    for w in workers:
        caps = w.capabilities
        style = _state_style(w.state)
        table.add_row(
            str(w.id), w.name, f"[{style}]{w.state}[/]" if style else w.state,
            str(caps.cpu_cores), human_bytes(caps.ram_bytes),
            *((render_gpus(caps),) if gpus else ()), str(caps.slots),
            ",".join(caps.kinds) or "-", sandboxed(caps),
            ",".join(str(t) for t in w.current_tasks) or "-", str(w.tasks_done),
            ago(w.last_seen),
        )
    console.print(table)
