"""The ``pilot`` command: one module per command family, gathered into one click group."""

from __future__ import annotations

import click

from parallel_pilot import __version__
from parallel_pilot.client.cli.accounts import (
    join_tokens_group,
    tokens_group,
    users_group,
    workers_group,
)
from parallel_pilot.client.cli.addon import addon_group
from parallel_pilot.client.cli.common import CliState, PilotGroup
from parallel_pilot.client.cli.db import db_group
from parallel_pilot.client.cli.demo import demo_command
from parallel_pilot.client.cli.jobs import (
    cancel_command,
    download_command,
    jobs_command,
    logs_command,
    retry_command,
    show_command,
    wait_command,
)
from parallel_pilot.client.cli.login import login_command
from parallel_pilot.client.cli.render import render_command
from parallel_pilot.client.cli.server import server_command, worker_command
from parallel_pilot.client.cli.sweep import sweep_command
from parallel_pilot.client.cli.train import train_command
from parallel_pilot.client.cli.up import up_command


@click.group(cls=PilotGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pilot")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Parallel Pilot: run jobs on shared machines.

    \b
    pilot up                         coordinator + local workers on this machine
    pilot sweep --items 1-100 --file sim.py -- python sim.py --seed {item}
    pilot jobs | show JOB | wait JOB | download JOB --out DIR
    """
    ctx.ensure_object(CliState)


for command in (
    server_command, worker_command, up_command, demo_command, login_command, sweep_command,
    train_command,
    render_command, addon_group,
    jobs_command, show_command, wait_command, logs_command, cancel_command, retry_command,
    download_command, workers_group, users_group, tokens_group, join_tokens_group, db_group,
):
    cli.add_command(command)


def main() -> None:
    """Entry point of the ``pilot`` command."""
    cli(prog_name="pilot")


__all__ = ["cli", "main"]
