"""``pilot login``: check a token against a coordinator and save both for later commands."""

from __future__ import annotations

import sys

import click

from parallel_pilot.client import config
from parallel_pilot.client.cli import common
from parallel_pilot.client.cli.common import UsageFailure, console, state


@click.command("login")
@click.option("--server", metavar="URL", required=True, help="Coordinator URL.")
@click.option("--token", metavar="TOKEN",
              help="API token; read from stdin when not given (keeps it out of the history).")
def login_command(server: str, token: str | None) -> None:
    """Save a coordinator URL and API token for later commands."""
    if not token:
        if sys.stdin.isatty():
            token = click.prompt("API token", hide_input=True)
        else:
            token = sys.stdin.readline()
    token = (token or "").strip()
    if not token:
        raise UsageFailure("no token given: pass --token or write it to stdin")
    settings = state().settings
    server = common.server_url(server)
    with common.make_client(server, token, settings) as client:
        client.connection.notify = common.notice
        me = client.me()
    config.write_config_file(settings.config_file, server, token)
    role = " (admin)" if me.is_admin else ""
    console.print(f"logged in to {server} as {me.name}{role}; "
                  f"saved in {settings.config_file}")
