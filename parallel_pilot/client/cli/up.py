"""``pilot up``: a coordinator and local workers on this machine in one command.

A port in use is refused before anything is printed or started (exit 2). Ctrl-C once
stops the workers in order (running tasks get their drain time, then are handed back),
then the coordinator; Ctrl-C again stops everything at once, bounded in time
(``LocalCluster.stop``).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

import click

from parallel_pilot.client.cli.common import EXIT_ERROR, UsageFailure, console, err_console
from parallel_pilot.client.local_cluster import LocalCluster, default_worker_count
from parallel_pilot.core.settings import DEFAULT_PORT
from parallel_pilot.errors import CannotListen

WATCH_SECONDS = 1.0  # seconds between checks that the children are still alive
ADMIN_PASSWORD_FILE = "admin-password"  # written by the coordinator on first start
ADMIN_TOKEN_FILE = "admin-token"
JOIN_TOKEN_FILE = "join-token"


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
    """Run a coordinator and local workers until Ctrl-C (twice: stop at once).

    The workers are yours, so they run every kind: render, sweep, python and train."""
    count = default_worker_count() if workers is None else workers
    cluster = LocalCluster(data_dir, port=port, workers=count, slots=slots)
    try:
        cluster.check_port()
    except CannotListen as exc:
        raise UsageFailure(exc.message) from None
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    failure: CannotListen | None = None
    try:
        err_console.print(f"starting a coordinator on {cluster.url} and {count} worker(s)…")
        cluster.start()
        _print_welcome(cluster)
        _watch(cluster)
    except CannotListen as exc:  # taken between the check and the coordinator's start
        failure = exc
    except (KeyboardInterrupt, StopRequested):
        err_console.print("stopping… (Ctrl-C again to stop at once)")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cluster.stop(hurry_on_signal=True, on_hurry=lambda: err_console.print(
                "stopping now: running tasks are handed back"))
        finally:
            signal.signal(signal.SIGTERM, previous)
    if failure is not None:
        raise UsageFailure(failure.message)


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it lies inside it (as the user typed
    ``--data-dir``), else absolute."""
    try:
        return str(path.relative_to(Path(os.getcwd()).resolve()))
    except ValueError:
        return str(path)


def _print_welcome(cluster: LocalCluster) -> None:
    data = cluster.data_dir
    token_file = _shown(data / ADMIN_TOKEN_FILE)
    password_file = data / ADMIN_PASSWORD_FILE
    console.print(f"[bold green]Parallel Pilot is up[/] at {cluster.url} with "
                  f"{len(cluster.workers)} worker(s), {cluster.slots} slot(s) each")
    if password_file.is_file():
        login = f"log in as admin, password in {_shown(password_file)}"
    else:
        login = "log in as admin with your password"
    console.print(f"dashboard: {cluster.url}/  ({login})")
    console.print(f"admin token: {cluster.admin_token}  (in {token_file})")
    console.print(f"join token for more workers: in {_shown(data / JOIN_TOKEN_FILE)}")
    console.print(f"logs: {_shown(cluster.log_dir)}")
    console.print("submit from another terminal in this folder:")
    console.print(f"  pilot login --server {cluster.url} < {token_file}")
    console.print("  pilot sweep --items 1-10 -- python -c 'print({item})'")
    console.print("  pilot render scene.blend   (a sample scene: pilot demo --keep-scene)")
    console.print("Ctrl-C stops the coordinator and the workers (twice: at once).")


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
