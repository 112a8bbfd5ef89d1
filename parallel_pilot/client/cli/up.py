"""``pilot up``: a coordinator and local workers on this machine in one command."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from parallel_pilot.client.cli.common import EXIT_ERROR, console, err_console
from parallel_pilot.client.local_cluster import LocalCluster, default_worker_count
from parallel_pilot.core.settings import DEFAULT_PORT

WATCH_SECONDS = 1.0  # seconds between checks that the children are still alive


class StopRequested(Exception):
    """SIGTERM arrived; leave the wait loop and stop the children."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested()


@click.command("up")
@click.option("--workers", type=click.IntRange(0, 1024),
              help="Local workers to start (default: one per core).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Coordinator port on 127.0.0.1 (0: any free port).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("pilot-data"), show_default=True,
              help="Database, blobs, tokens and logs.")
@click.option("--slots", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Tasks each worker runs at once.")
def up_command(workers: int | None, port: int, data_dir: Path, slots: int) -> None:
    """Run a coordinator and local workers until Ctrl-C.

    The workers are yours, so they run every kind: render, sweep, python and train."""
    count = default_worker_count() if workers is None else workers
    cluster = LocalCluster(data_dir, port=port, workers=count, slots=slots)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        err_console.print(f"starting a coordinator on {cluster.url} and {count} worker(s)…")
        cluster.start()
        _print_welcome(cluster)
        _watch(cluster)
    except (KeyboardInterrupt, StopRequested):
        err_console.print("stopping…")
    finally:
        # a second Ctrl-C must not cut the orderly stop short
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cluster.stop()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)


def _print_welcome(cluster: LocalCluster) -> None:
    token_file = cluster.data_dir / "admin-token"
    console.print(f"[bold green]Parallel Pilot is up[/] at {cluster.url} with "
                  f"{len(cluster.workers)} worker(s), {cluster.slots} slot(s) each")
    console.print(f"admin token: {cluster.admin_token}  (in {token_file})")
    console.print(f"join token for more workers: in {cluster.data_dir / 'join-token'}")
    console.print(f"logs: {cluster.log_dir}")
    console.print("submit from another terminal:")
    console.print(f"  pilot login --server {cluster.url} < {token_file}")
    console.print("  pilot sweep --items 1-10 -- python -c 'print({item})'")
    console.print("Ctrl-C stops the coordinator and the workers.")


def _watch(cluster: LocalCluster) -> None:
    """Wait for Ctrl-C or SIGTERM; leave with an error if the coordinator dies."""
    reported: set[str] = set()
    idle = threading.Event()
    while True:
        idle.wait(WATCH_SECONDS)
        for dead in cluster.dead_children():
            if dead not in reported:
                reported.add(dead)
                err_console.print(f"[yellow]{dead} has stopped; see {cluster.log_dir}[/]")
        if cluster.server is not None and cluster.server.poll() is not None:
            err_console.print("[red]the coordinator has stopped; shutting down[/]")
            raise SystemExit(EXIT_ERROR)
