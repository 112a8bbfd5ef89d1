"""``pilot train``: DiLoCo training of a spec file's model on the workers, with one progress
line per finished round (round, train loss, eval metrics, workers whose deltas arrived)."""

from __future__ import annotations

import time
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
from parallel_pilot.client.cli.jobs import report_finished
from parallel_pilot.client.cli.sweep import named_files
from parallel_pilot.client.sdk import Client
from parallel_pilot.core.protocol import JobInfo, TaskInfo
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.kinds.train.kind import metrics_row

POLL_SECONDS = 1.0  # seconds between looks at the job while following it
MAX_METRICS_SHOWN = 3  # eval metrics besides the loss on one progress line


@click.command("train")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--file", "files", multiple=True, metavar="PATH",
              help="A data file or folder placed next to the spec (repeatable).")
@click.option("--workers", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Workers (data shards) per round, k.")
@click.option("--inner-steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="AdamW steps per worker per round, H.")
@click.option("--rounds", type=click.IntRange(min=1), help="Rounds (default 10).")
@click.option("--total-steps", type=click.IntRange(min=1),
              help="Instead of --rounds: inner steps over all workers.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per batch (32).")
@click.option("--inner-lr", type=click.FloatRange(min=0, min_open=True),
              help="Inner AdamW learning rate (4e-4).")
@click.option("--outer-lr", type=click.FloatRange(min=0, min_open=True),
              help="Outer SGD learning rate (0.7).")
@click.option("--outer-momentum", type=click.FloatRange(0, 1, max_open=True),
              help="Outer Nesterov momentum (0.9).")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of the model and data (0).")
@click.option("--quorum", type=click.IntRange(min=1),
              help="Deltas a round needs once its deadline passed (half the workers).")
@click.option("--round-deadline", type=click.FloatRange(min=0, min_open=True),
              help="Seconds a round waits for late deltas after its first (600).")
@click.option("--name", help="Job name.")
@submit_options
@connection_options
def train_command(spec: Path, files: tuple[str, ...], workers: int, inner_steps: int,
                  rounds: int | None, total_steps: int | None, batch_size: int | None,
                  inner_lr: float | None, outer_lr: float | None,
                  outer_momentum: float | None, seed: int | None, quorum: int | None,
                  round_deadline: float | None, name: str | None, priority: int,
                  no_wait: bool, wait_timeout: float | None, as_json: bool,
                  requires: dict[str, Any]) -> None:
    """Train the model defined in SPEC (a Python file) across the workers with DiLoCo.

    \b
    SPEC defines build_model(), shard_batches(shard, num_shards, batch_size, seed),
    compute_loss(model, batch) and optionally evaluate(model) -> {"loss": ...}.
    pilot train spec.py --file data.csv --workers 4 --inner-steps 50 --rounds 20
    """
    if not spec.is_file():
        raise UsageFailure(f"no such file: {spec}")
    if rounds is not None and total_steps is not None:
        raise UsageFailure("give --rounds or --total-steps, not both")
    named = named_files(files)
    client = get_client()
    job = client.submit_train(
        spec, files=named, workers=workers, inner_steps=inner_steps, rounds=rounds,
        total_steps=total_steps, batch_size=batch_size, inner_lr=inner_lr, outer_lr=outer_lr,
        outer_momentum=outer_momentum, seed=seed, quorum=quorum,
        round_deadline_seconds=round_deadline, name=name, priority=priority,
        on_upload=None if as_json else lambda n, p: err_console.print(f"uploading {n}"),
        requirements=requires)
    total_rounds = _rounds_of(job)
    if no_wait:
        if as_json:
            print_json({"job": job.id, "state": str(job.state), "rounds": total_rounds,
                        "tasks": job.tasks_total})
        else:
            console.print(f"submitted job {job.id} ({total_rounds} rounds of {workers} "
                          f"workers); follow it with pilot wait {job.id}")
        return
    if not as_json:
        err_console.print(f"submitted job {job.id}: {total_rounds} rounds of {workers} workers "
                          f"x {inner_steps} steps")
    job, rows = follow_rounds(client, job.id, total_rounds, timeout=wait_timeout,
                              show=not as_json)
    if as_json:
        print_json({"job": job.id, "state": str(job.state), "rounds": total_rounds,
                    "metrics": rows, "error": job.error})
    else:
        report_finished(job)
        if job.state == JobState.COMPLETED:
            console.print(f"model and metrics: pilot download {job.id} --out train-{job.id}")
    if job.state != JobState.COMPLETED:
        raise SystemExit(EXIT_ERROR)


def _rounds_of(job: JobInfo) -> int:
    # init + rounds x (workers + aggregate)
    return max(0, (job.tasks_total - 1) // (int(job.params.get("workers", 1)) + 1))


def round_row(task: TaskInfo) -> dict[str, Any] | None:
    """The metrics of a finished init or aggregate task (None for any other task)."""
    if task.state != TaskState.DONE:
        return None
    return metrics_row(task.result or {})


def format_row(row: dict[str, Any], total_rounds: int, workers: int) -> str:
    parts = [f"round {row['round']}/{total_rounds}"]
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.4f}")
    if row.get("eval_loss") is not None:
        parts.append(f"eval loss {row['eval_loss']:.4f}")
    extra = [k for k in row if k.startswith("eval_") and k != "eval_loss"]
    parts += [f"{k.removeprefix('eval_')} {row[k]:.4g}" for k in extra[:MAX_METRICS_SHOWN]]
    if row["round"] == 0:
        parts.append("(initial model)")
    else:
        parts.append(f"workers {row.get('active_workers')}/{workers}")
        if row.get("deltas_accepted") != row.get("active_workers"):
            parts.append(f"accepted {row.get('deltas_accepted')}")
    return "  ".join(parts)


def follow_rounds(client: Client, job_id: int, total_rounds: int, *,
                  timeout: float | None, show: bool) -> tuple[JobInfo, list[dict[str, Any]]]:
    """Wait for the job, printing one line per round as its aggregate finishes."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[int, dict[str, Any]] = {}
    while True:
        job = client.job(job_id)
        workers = int(job.params.get("workers", 1))
        for task in client.tasks(job_id):
            row = round_row(task)
            if row is not None and row["round"] not in seen:
                seen[row["round"]] = row
                if show:
                    console.print(format_row(row, total_rounds, workers))
        if job.state.finished:
            return job, [seen[r] for r in sorted(seen)]
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} is still {job.state} after {timeout:g} s "
                               f"({len(seen) - 1 if seen else 0}/{total_rounds} rounds)")
        time.sleep(POLL_SECONDS)
