"""Commands that follow and manage jobs: ``jobs``, ``show``, ``wait``, ``logs``, ``cancel``,
``retry``, ``download``, ``workers``."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape
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
from parallel_pilot.core.protocol import Capabilities, JobInfo, OutputInfo, TaskInfo
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.core.units import human_bytes
from parallel_pilot.kinds.sweep import item_failure

MAX_FAILURES_SHOWN = 20  # failed tasks, and failed items, listed by `pilot show`


def _state_style(state: str) -> str:
    return {"completed": "green", "done": "green", "failed": "red", "cancelled": "yellow",
            "running": "cyan", "leased": "cyan", "busy": "cyan", "offline": "dim",
            "revoked": "red", "pending": "yellow"}.get(state, "")


def job_state(job: JobInfo) -> str:
    """The job's state as rich markup; a job with failed items says how many, in yellow
    (``completed (3 failed)``), so that no list shows their failure as a plain success."""
    text, style = str(job.state), _state_style(job.state)
    if job.failed_items:
        text, style = f"{text} ({job.failed_items} failed)", "red" if \
            job.state == JobState.FAILED else "yellow"
    return f"[{style}]{text}[/]" if style else text


def task_number(task: TaskInfo) -> int:
    """A task's number as users see it everywhere: its place in the job, from 1."""
    return task.index + 1


def failed_items(tasks: list[TaskInfo]) -> list[tuple[TaskInfo, str]]:
    """Done items whose command failed, with how (``exit 2``, ``could not start: …``)."""
    out = []
    for task in tasks:
        how = item_failure(task.result) if task.state == TaskState.DONE else None
        if how is not None:
            out.append((task, how))
    return out


def item_name(task: TaskInfo) -> str:
    return f"item {(task.result or {}).get('item', task.name.removeprefix('item '))}"


def describe_failed_items(failed: list[tuple[TaskInfo, str]], shown: int) -> str:
    """``item 4 exit 2, item 7 exit 1, item 9 could not start: nosuchcmd: …`` (the first
    ``shown``, then how many more)."""
    text = ", ".join(f"{item_name(task)} {how}" for task, how in failed[:shown])
    if len(failed) > shown:
        text += f", and {len(failed) - shown} more"
    return escape(text)  # a command's name may hold [brackets]: printed, not markup


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
    waits = any(j.waiting_reason for j in jobs)
    for column in ("ID", "NAME", "KIND", "STATE", "TASKS", "PROGRESS", "WORKERS", "OWNER",
                   "CREATED", *(("WAITING",) if waits else ())):
        table.add_column(column, justify="right" if column in ("ID", "TASKS") else "left")
    for job in jobs:
        table.add_row(str(job.id), job.name, job.kind, job_state(job),
                      f"{job.tasks_done}/{job.tasks_total}",
                      f"{job.progress:.0%}", str(job.active_workers), job.owner,
                      ago(job.created_at),
                      *((f"[yellow]{escape(short_waiting(job.waiting_reason))}[/]",)
                        if waits else ()))
    console.print(table)


def short_waiting(reason: str | None) -> str:
    """A waiting reason for a table cell: its first clause, without ``waiting:``
    (``no online worker has tag studio-a``); ``pilot show`` prints it whole."""
    if not reason:
        return ""
    return reason.removeprefix("waiting: ").split("; ", 1)[0]


@click.command("show")
@click.argument("job_id", type=int, metavar="JOB")
@json_option
@connection_options
@pass_client
def show_command(client: Client, job_id: int, as_json: bool) -> None:
    """Show one job: state, task counts, failed tasks and failed items."""
    job = client.job(job_id)
    tasks = client.tasks(job_id)
    failures = [t for t in tasks if t.state == TaskState.FAILED]
    bad_items = failed_items(tasks) if job.failed_items else []
    if as_json:
        print_json({**job.model_dump(mode="json"),
                    "failures": [t.model_dump(mode="json") for t in failures]})
        return
    _print_job(job)
    if failures:
        console.print(f"\n[bold red]{len(failures)} failed task(s)[/]")
        for task in failures[:MAX_FAILURES_SHOWN]:
            console.print(f"  task {task_number(task)} ({escape(task.name)}), "
                          f"{task.failures} failure(s): "
                          f"{escape((task.error or '').strip()[:300])}")
        if len(failures) > MAX_FAILURES_SHOWN:
            console.print(f"  … and {len(failures) - MAX_FAILURES_SHOWN} more "
                          f"(pilot show {job_id} --json)")
    if bad_items:
        console.print(f"\n[bold yellow]{len(bad_items)} failed item(s)[/]")
        for task, how in bad_items[:MAX_FAILURES_SHOWN]:
            console.print(f"  {item_name(task)} (task {task_number(task)}): {escape(how)}")
        if len(bad_items) > MAX_FAILURES_SHOWN:
            console.print(f"  … and {len(bad_items) - MAX_FAILURES_SHOWN} more "
                          f"(pilot download {job_id}: results.jsonl)")


def _print_job(job: JobInfo) -> None:
    rows = [
        ("job", f"{job.id} {job.name}"),
        ("kind", job.kind),
        ("state", job_state(job)),
        ("owner", job.owner),
        ("priority", str(job.priority)),
        ("tasks", f"{job.tasks_done}/{job.tasks_total} done ({job.progress:.0%})"),
        ("task states", ", ".join(f"{k} {v}" for k, v in sorted(job.task_counts.items()) if v)
         or "-"),
        *([("items", f"{job.tasks_done} done, {job.failed_items} failed "
                     f"(non-zero exit, time limit or could not start)" if job.failed_items
            else f"{job.tasks_done} done, none failed")] if job.failed_items is not None
          else []),
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
    if job.waiting_reason:
        console.print(f"[yellow]{escape(job.waiting_reason)}[/]")


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
    if job.state == JobState.COMPLETED and job.failed_items:
        console.print(f"job {job.id} [yellow]completed with {job.failed_items} failed "
                      f"item(s)[/]: {job.tasks_done}/{job.tasks_total} tasks done")
    elif job.state == JobState.COMPLETED:
        console.print(f"job {job.id} [green]completed[/]: {job.tasks_done}/{job.tasks_total} "
                      "tasks done")
    else:
        reason = f": {job.error}" if job.error else ""
        err_console.print(f"job {job.id} [red]{job.state}[/]{reason}")


@click.command("logs")
@click.argument("job_id", type=int, metavar="JOB")
@click.option("--task", "task", type=click.IntRange(min=1), metavar="N",
              help="Only task N's lines: its number in the job (1, 2, …), as the dashboard "
                   "and pilot show number tasks.")
@connection_options
@pass_client
def logs_command(client: Client, job_id: int, task: int | None) -> None:
    """Print the log lines of a job's tasks, each prefixed with its task number."""
    lines = client.logs(job_id, task=task)  # a task the job lacks is an error
    if not lines:
        which = f"task {task} of job {job_id}" if task is not None else f"job {job_id}"
        err_console.print(f"no log lines yet for {which}")
        return
    numbers = {} if task is not None else {t.id: task_number(t) for t in client.tasks(job_id)}
    for line in lines:
        prefix = "" if task is not None else f"[task {numbers.get(line.task_id, '?')}] "
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
@click.option("--all", "everything", is_flag=True,
              help="Also the files kept for the farm: a render's preview/, meta/ and "
                   "video-frames/.")
@connection_options
@pass_client
def download_command(client: Client, job_id: int, out_dir: Path | None,
                     everything: bool) -> None:
    """Download a job's outputs (a sweep: results.jsonl and items/<item>/…; a render:
    frames/, video.mp4, frames.zip). Files already there with the same content are kept."""
    out_dir = out_dir or Path(f"pilot-job-{job_id}")
    wanted, left_out = client.outputs_to_download(job_id, everything=everything)
    written: list[Path] = []
    present: list[Path] = []
    with Progress(TextColumn("download"), BarColumn(), DownloadColumn(),
                  console=err_console, transient=True) as progress:
        bar = progress.add_task("download", total=sum(o.size for o in wanted))

        def on_file(output: OutputInfo, path: Path, fetched: bool) -> None:
            (written if fetched else present).append(path)
            if not fetched:
                progress.advance(bar, output.size)

        client.download(job_id, out_dir, outputs=wanted, on_file=on_file,
                        on_bytes=lambda n: progress.advance(bar, n))
    for path in written:
        click.echo(str(path))
    summary = f"{len(written)} file(s) written to {out_dir}"
    if present:
        summary += f", {len(present)} already up to date"
    if left_out:
        summary += (f"; {len(left_out)} file(s) kept for the farm left out "
                    f"({', '.join(sorted({o.path.split('/')[0] + '/' for o in left_out}))}; "
                    "--all fetches them)")
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


def slots_text(cpu: int, gpu: int, *, short: bool = False) -> str:
    """A worker's slots: ``2 CPU + 2 GPU`` (``short``: ``2+2 GPU``, or ``2`` without
    GPUs)."""
    if short:
        return f"{cpu}+{gpu} GPU" if gpu else str(cpu)
    return f"{cpu} CPU + {gpu} GPU"


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
    for column in ("ID", "NAME", "STATE", "CORES", "RAM", *(("GPU*",) if gpus else ()),
                   "SLOTS", "KINDS", "SANDBOX*",
                   "TASKS", "DONE", "LAST SEEN"):
        table.add_column(column, no_wrap=column in ("RAM", "SANDBOX*"))
    for w in workers:
        caps = w.capabilities
        style = _state_style(w.state)
        table.add_row(
            str(w.id), w.name, f"[{style}]{w.state}[/]" if style else w.state,
            str(caps.cpu_cores), human_bytes(caps.ram_bytes),
            *((render_gpus(caps),) if gpus else ()),
            slots_text(w.slots if w.slots is not None else caps.slots, w.gpu_slots or 0,
                       short=True),
            ",".join(caps.kinds) or "-", sandboxed(caps) + (" ✓" if w.trusted else ""),
            ",".join(str(t) for t in w.current_tasks) or "-", str(w.tasks_done),
            ago(w.last_seen),
        )
    console.print(table)
    console.print("* claimed by the worker; ✓ an admin trusts it (pilot workers trust ID): "
                  "only then does --require-sandbox run there", style="dim")
