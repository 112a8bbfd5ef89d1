"""``pilot sweep``: run a command once per item on the workers, with attached files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from parallel_pilot.client.cli.common import (
    EXIT_ERROR,
    UsageFailure,
    connection_options,
    console,
    err_console,
    get_client,
    print_json,
    submit_options,
)
from parallel_pilot.client.cli.jobs import describe_failed_items, failed_items, report_finished
from parallel_pilot.client.cli.progress import follow
from parallel_pilot.client.job_files import name_files
from parallel_pilot.client.sdk import Client
from parallel_pilot.core.protocol import JobInfo
from parallel_pilot.core.ranges import parse_items_file
from parallel_pilot.core.states import JobState
from parallel_pilot.errors import InvalidInput

MAX_ITEMS_LISTED = 10  # failed items named in the summary
MAX_NAME = 80  # characters of a command line used as the default job name


@click.command("sweep", context_settings={"ignore_unknown_options": True,
                                          "allow_interspersed_args": False})
@click.option("--items", help="Items: a range like 1-100, 1-10,20-30, or a comma list a,b,c.")
@click.option("--items-file", type=click.Path(dir_okay=False, path_type=Path),
              help="A file with one item per line.")
@click.option("--file", "files", multiple=True, metavar="PATH",
              help="A file or folder to place in each run's working directory (repeatable).")
@click.option("--collect", multiple=True, metavar="GLOB",
              help="Output files to gather from each run, like 'out/*.csv' (repeatable).")
@click.option("--timeout", "timeout_seconds", type=click.FloatRange(min=0, min_open=True),
              help="Seconds one run may take.")
@click.option("--name", help="Job name.")
@click.option("--require-sandbox", is_flag=True,
              help="Run only on workers that sandbox commands (pilot worker --sandbox) and "
                   "that an admin marked trusted (pilot workers trust ID).")
@click.option("--fail-on-nonzero", is_flag=True,
              help="Exit 1 when any item failed (exited non-zero, timed out or could not "
                   "start); without it only a job that did not complete does.")
@submit_options
@connection_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def sweep_command(items: str | None, items_file: Path | None, files: tuple[str, ...],
                  collect: tuple[str, ...], timeout_seconds: float | None, name: str | None,
                  priority: int, no_wait: bool, wait_timeout: float | None,
                  require_sandbox: bool, fail_on_nonzero: bool, as_json: bool,
                  requires: dict[str, Any],
                  command: tuple[str, ...]) -> None:
    """Run COMMAND once per item; {item} in an argument is replaced by the item.

    \b
    pilot sweep --items 1-100 --file sim.py --collect 'out/*.csv' -- python sim.py --seed {item}
    """
    item_spec = _items(items, items_file)
    named = named_files(files)
    client = get_client()
    job = client.submit_sweep(
        list(command), item_spec, files=named, collect=collect,
        timeout_seconds=timeout_seconds, name=name or _default_name(command), priority=priority,
        on_upload=None if as_json else lambda n, p: err_console.print(f"uploading {n}"),
        require_sandbox=require_sandbox, requirements=requires,
    )
    if no_wait:
        if as_json:
            print_json({"job": job.id, "state": str(job.state), "tasks": job.tasks_total})
        else:
            console.print(f"submitted job {job.id} ({job.tasks_total} tasks); follow it with "
                          f"pilot wait {job.id}")
        return
    if not as_json:
        err_console.print(f"submitted job {job.id} ({job.tasks_total} tasks)")
    job = follow(client, job.id, timeout=wait_timeout, show=not as_json)
    if as_json:
        print_json({"job": job.id, "state": str(job.state), "tasks": job.tasks_total,
                    "tasks_done": job.tasks_done, "failed_items": job.failed_items,
                    "error": job.error})
    else:
        summarize(client, job)
    if job.state != JobState.COMPLETED or (fail_on_nonzero and job.failed_items):
        raise SystemExit(EXIT_ERROR)


def _default_name(command: tuple[str, ...]) -> str:
    """The command line, shortened, so `pilot jobs` says what each sweep runs."""
    text = " ".join(command)
    return text if len(text) <= MAX_NAME else text[:MAX_NAME - 1] + "…"


def _items(items: str | None, items_file: Path | None) -> str | list[str]:
    if items and items_file:
        raise UsageFailure("give --items or --items-file, not both")
    if items_file is not None:
        try:
            content = items_file.read_text()
        except OSError as exc:
            raise UsageFailure(f"cannot read the items file {items_file}: {exc.strerror}") \
                from None
        try:
            return parse_items_file(content)
        except InvalidInput as exc:
            raise UsageFailure(f"{items_file}: {exc.message}") from None
    if not items:
        raise UsageFailure("no items: pass --items 1-100 or --items-file FILE")
    return items


def named_files(files: tuple[str, ...]) -> dict[str, Path]:
    """Expand folders into their files and name each relative to the current directory;
    every problem is reported before anything is uploaded."""
    paths: list[Path] = []
    for given in files:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            if not found:
                raise UsageFailure(f"the folder {given} has no files")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise UsageFailure(f"no such file: {given}")
    try:
        return name_files(paths)
    except InvalidInput as exc:
        raise UsageFailure(exc.message) from None


def summarize(client: Client, job: JobInfo) -> None:
    """How the sweep ended: ``3 of 10 items failed: item 4 exit 2, item 7 exit 1, item 9
    could not start: nosuchcmd: No such file or directory``, or that all exited 0."""
    report_finished(job)
    if job.state != JobState.COMPLETED:
        console.print(f"see the failures with: pilot show {job.id}")
        return
    if job.failed_items:
        bad = failed_items(client.tasks(job.id))
        console.print(f"[yellow]{len(bad)} of {job.tasks_total} items failed[/]: "
                      f"{describe_failed_items(bad, MAX_ITEMS_LISTED)}")
    else:
        console.print(f"{job.tasks_done} items done, all exited 0")
    console.print(f"results: pilot download {job.id} --out results-{job.id}")
