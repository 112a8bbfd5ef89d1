"""``pilot demo``: a Monte-Carlo sweep across local workers, start to finish.

It starts a ``LocalCluster`` (the same code as ``pilot up``), submits a small simulation
as a sweep, follows it, downloads the results and prints them with a combined estimate.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.table import Table

from parallel_pilot.client.cli.common import EXIT_ERROR, console, err_console
from parallel_pilot.client.cli.progress import follow
from parallel_pilot.client.local_cluster import LocalCluster, default_worker_count
from parallel_pilot.core.states import JobState
from parallel_pilot.errors import PilotError

DEMO_MAX_WORKERS = 4  # default worker count is one per core, but no more than this
DEMO_SAMPLES = 400_000  # random points per item
DEMO_TIMEOUT = 600.0  # seconds the demo job may take before the demo gives up

PI_SCRIPT = '''\
"""Estimate pi from random points in the unit square (one seed per sweep item)."""
import argparse, json, os, random

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--samples", type=int, default=100000)
args = parser.parse_args()
rng = random.Random(args.seed)
inside = sum(1 for _ in range(args.samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
result = {"seed": args.seed, "samples": args.samples, "inside": inside,
          "pi": 4.0 * inside / args.samples}
os.makedirs("out", exist_ok=True)
with open("out/result.json", "w") as f:
    json.dump(result, f)
print(f"seed {args.seed}: pi is about {result['pi']:.5f}")
'''


@click.command("demo")
@click.option("--workers", type=click.IntRange(1, 256),
              help=f"Local workers (default: one per core, at most {DEMO_MAX_WORKERS}).")
@click.option("--items", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Simulations to run (seeds 1..N).")
@click.option("--samples", type=click.IntRange(1, 100_000_000), default=DEMO_SAMPLES,
              show_default=True, help="Random points per simulation.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Coordinator data dir (default: a temporary one).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-output"), show_default=True, help="Where results go.")
def demo_command(workers: int | None, items: int, samples: int, data_dir: Path | None,
                 out_dir: Path) -> None:
    """Run a Monte-Carlo estimate of pi as a sweep on local workers and show the results."""
    started = time.monotonic()
    count = workers or min(default_worker_count(), DEMO_MAX_WORKERS)
    tmp = Path(tempfile.mkdtemp(prefix="pilot-demo-"))
    cluster = LocalCluster(data_dir or tmp / "data", port=0, workers=count)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    ok = False
    try:
        err_console.print(f"starting a coordinator and {count} worker(s)…")
        cluster.start()
        ok = _run(cluster, tmp, items, samples, out_dir)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:  # keep the coordinator's and workers' logs for a look
            err_console.print(f"logs kept in {cluster.log_dir}")
    console.print(f"total wall time: {time.monotonic() - started:.1f} s")
    if not ok:
        raise SystemExit(EXIT_ERROR)


def _run(cluster: LocalCluster, tmp: Path, items: int, samples: int, out_dir: Path) -> bool:
    script = tmp / "pi.py"
    script.write_text(PI_SCRIPT)
    console.print(f"coordinator at {cluster.url}, {len(cluster.workers)} worker(s)")
    with cluster.client() as client:
        # the workers are on this machine, so they can run this very interpreter
        job = client.submit_sweep(
            [sys.executable, "pi.py", "--seed", "{item}", "--samples", str(samples)],
            f"1-{items}", files={"pi.py": script}, collect=["out/*.json"],
            name=f"demo: pi from {items} seeds",
        )
        console.print(f"submitted job {job.id}: {job.tasks_total} simulations")
        job = follow(client, job.id, timeout=DEMO_TIMEOUT, check=lambda: _alive(cluster))
        if job.state != JobState.COMPLETED:
            err_console.print(f"[red]job {job.id} {job.state}[/]: {job.error or ''}")
            return False
        client.download(job.id, out_dir)
    return _print_results(out_dir)


def _alive(cluster: LocalCluster) -> None:
    """Give up at once when the coordinator or every worker has died."""
    dead = cluster.dead_children()
    workers_dead = sum(1 for d in dead if d.startswith("worker"))
    if (dead and dead[0].startswith("coordinator")) or workers_dead == len(cluster.workers):
        raise PilotError(f"{', '.join(dead)} stopped; see the logs in {cluster.log_dir}")


def _print_results(out_dir: Path) -> bool:
    results_file = out_dir / "results.jsonl"
    rows = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    table = Table(title="results", header_style="bold")
    for column in ("item", "exit code", "pi estimate", "samples"):
        table.add_column(column, justify="right")
    inside = total = failures = 0
    for row in rows:
        value = _item_result(out_dir, str(row["item"]))
        if row.get("exit_code") != 0 or value is None:
            failures += 1
            table.add_row(str(row["item"]), str(row.get("exit_code")), "-", "-")
            continue
        inside += int(value["inside"])
        total += int(value["samples"])
        table.add_row(str(row["item"]), "0", f"{value['pi']:.5f}", str(value["samples"]))
    console.print(table)
    if total:
        estimate = 4 * inside / total
        console.print(f"combined estimate from {total:,} points: pi ≈ [bold]{estimate:.6f}[/]")
    console.print(f"results in {out_dir}/ (results.jsonl, items/<item>/out/result.json)")
    if failures:
        err_console.print(f"[red]{failures} item(s) failed[/]")
    return failures == 0 and bool(rows)


def _item_result(out_dir: Path, item: str) -> dict[str, float] | None:
    try:
        data = json.loads((out_dir / "items" / item / "out" / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
