"""Account commands: ``users`` (admin), ``tokens`` (the caller's own API tokens, and the
browsers signed in as them: ``tokens sessions``, ``tokens sign-out``), ``join-tokens``
(admin) and ``workers`` (the farm list, plus ``workers revoke``)."""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import click
from rich.table import Table

from parallel_pilot.client.cli.common import (
    UsageFailure,
    ago,
    connection_options,
    console,
    json_option,
    pass_client,
    print_json,
)
from parallel_pilot.client.cli.jobs import workers_command
from parallel_pilot.client.sdk import Client
from parallel_pilot.core.protocol import MIN_PASSWORD_CHARS

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}  # seconds per unit
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


class Duration(click.ParamType):
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` (a bare number is seconds) -> seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION_RE.match(str(value))
        if not match or int(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration like 90s, 30m, 12h, 7d or 2w", param, ctx)
        return int(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True,
                                err=True)
    if len(password) < MIN_PASSWORD_CHARS:
        raise UsageFailure(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    return password


def _expires(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


# ------------------------------------------------------------ users


@click.group("users")
def users_group() -> None:
    """Manage user accounts (admin)."""


@users_group.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an admin.")
@click.option("--password-stdin", is_flag=True,
              help="Read a password (for the dashboard) from the first line of stdin.")
@json_option
@connection_options
@pass_client
def users_add(client: Client, name: str, admin: bool, password_stdin: bool,
              as_json: bool) -> None:
    """Create user NAME and print their first API token (shown only once)."""
    password = _password(True) if password_stdin else None
    created = client.create_user(name, admin=admin, password=password)
    if as_json:
        print_json({"user": created.user, "token": created.token})
        return
    console.print(f"created {'admin' if admin else 'user'} {created.user}")
    console.print(f"API token (shown only once): {created.token}")


@users_group.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin (else prompt).")
@connection_options
@pass_client
def users_passwd(client: Client, name: str, password_stdin: bool) -> None:
    """Set the password of user NAME."""
    client.set_password(name, _password(password_stdin))
    console.print(f"password of {name} set")


@users_group.command("list")
@json_option
@connection_options
@pass_client
def users_list(client: Client, as_json: bool) -> None:
    """List user accounts."""
    users = client.users()
    if as_json:
        print_json({"users": [u.model_dump(mode="json") for u in users]})
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "ROLE", "STATE", "CREATED"):
        table.add_column(column)
    for u in users:
        table.add_row(str(u.id), u.name, "admin" if u.is_admin else "user",
                      "disabled" if u.disabled else "active", ago(u.created_at))
    console.print(table)


@users_group.command("disable")
@click.argument("name")
@connection_options
@pass_client
def users_disable(client: Client, name: str) -> None:
    """Disable user NAME; all their tokens stop working."""
    client.disable_user(name)
    console.print(f"user {name} disabled")


# ------------------------------------------------------------ API tokens


@click.group("tokens")
def tokens_group() -> None:
    """Manage your own API tokens (and the browsers signed in as you)."""


@tokens_group.command("create")
@click.option("--name", default="", help="A label to recognise the token by.")
@click.option("--expires", type=Duration(), metavar="DURATION",
              help="Expire after this long: 90s, 30m, 12h, 7d, 2w (default: never).")
@json_option
@connection_options
@pass_client
def tokens_create(client: Client, name: str, expires: int | None, as_json: bool) -> None:
    """Create an API token (shown only once)."""
    created = client.create_token(name, expires_seconds=expires)
    if as_json:
        print_json(created)
        return
    console.print(f"token {created.id} (expires {_expires(created.expires_at)}), "
                  "shown only once:")
    console.print(created.token)


@tokens_group.command("list")
@json_option
@connection_options
@pass_client
def tokens_list(client: Client, as_json: bool) -> None:
    """List your API tokens (the tokens themselves are never shown again)."""
    tokens = client.tokens()
    if as_json:
        print_json({"tokens": [t.model_dump(mode="json") for t in tokens]})
        return
    if not tokens:
        console.print("no API tokens (pilot tokens create makes one)")
    else:
        table = Table(box=None, header_style="bold")
        for column in ("ID", "NAME", "TOKEN", "CREATED", "EXPIRES"):
            table.add_column(column)
        for t in tokens:
            table.add_row(str(t.id), t.name or "-", "pp_u_…", ago(t.created_at),
                          "expired" if t.expired else _expires(t.expires_at))
        console.print(table)
    browsers = len(client.sessions())
    if browsers:  # they used to be listed here: say where they went
        console.print(f"{browsers} browser{'' if browsers == 1 else 's'} signed in to the "
                      "dashboard: pilot tokens sessions", style="dim")


@tokens_group.command("revoke")
@click.argument("token_id", type=int, metavar="ID")
@connection_options
@pass_client
def tokens_revoke(client: Client, token_id: int) -> None:
    """Revoke your API token ID."""
    client.revoke_token(token_id)
    console.print(f"token {token_id} revoked")


@tokens_group.command("sessions")
@json_option
@connection_options
@pass_client
def tokens_sessions(client: Client, as_json: bool) -> None:
    """List the browsers signed in to the dashboard as you (newest first)."""
    sessions = client.sessions()
    if as_json:
        print_json({"sessions": [t.model_dump(mode="json") for t in sessions]})
        return
    if not sessions:
        console.print("no browser is signed in to the dashboard as you")
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "SIGNED IN", "EXPIRES"):
        table.add_column(column)
    for t in sessions:
        table.add_row(str(t.id), ago(t.created_at), _expires(t.expires_at))
    console.print(table)


@tokens_group.command("sign-out")
@click.argument("session_id", type=int, metavar="ID")
@connection_options
@pass_client
def tokens_sign_out(client: Client, session_id: int) -> None:
    """Sign out browser session ID (from pilot tokens sessions)."""
    client.sign_out(session_id)
    console.print(f"browser session {session_id} signed out")


# ------------------------------------------------------------ join tokens


@click.group("join-tokens")
def join_tokens_group() -> None:
    """Manage the tokens workers join with (admin)."""


@join_tokens_group.command("create")
@click.option("--name", default="", help="A label to recognise the token by.")
@click.option("--uses", type=click.IntRange(1, 1_000_000),
              help="How many workers may join with it (default: any number).")
@click.option("--expires", type=Duration(), metavar="DURATION",
              help="Expire after this long: 90s, 30m, 12h, 7d, 2w (default: never).")
@click.option("--approval", is_flag=True,
              help="Workers joining with it get no tasks until an admin approves each "
                   "(pilot workers approve ID).")
@click.option("--max-slots", type=click.IntRange(1, 64),
              help="Slots a worker joining with it is given at most, whatever it asks.")
@json_option
@connection_options
@pass_client
def join_tokens_create(client: Client, name: str, uses: int | None, expires: int | None,
                       approval: bool, max_slots: int | None, as_json: bool) -> None:
    """Create a join token (shown only once)."""
    created = client.create_join_token(name, uses=uses, expires_seconds=expires,
                                       approval_required=approval, max_slots=max_slots)
    if as_json:
        print_json(created)
        return
    extra = "".join([", workers wait for approval" if approval else "",
                     f", at most {max_slots} slots" if max_slots else ""])
    console.print(f"join token {created.id} ({'unlimited' if uses is None else uses} uses, "
                  f"expires {_expires(created.expires_at)}{extra}), shown only once:")
    console.print(created.token)


@join_tokens_group.command("list")
@json_option
@connection_options
@pass_client
def join_tokens_list(client: Client, as_json: bool) -> None:
    """List join tokens."""
    tokens = client.join_tokens()
    if as_json:
        print_json({"join_tokens": [t.model_dump(mode="json") for t in tokens]})
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "STATE", "USES LEFT", "APPROVAL", "MAX SLOTS", "CREATED",
                   "EXPIRES"):
        table.add_column(column)
    for t in tokens:
        table.add_row(str(t.id), t.name or "-", t.state,
                      "unlimited" if t.uses_left is None else str(t.uses_left),
                      "required" if t.approval_required else "-",
                      str(t.max_slots) if t.max_slots else "-",
                      ago(t.created_at), _expires(t.expires_at))
    console.print(table)


@join_tokens_group.command("revoke")
@click.argument("token_id", type=int, metavar="ID")
@connection_options
@pass_client
def join_tokens_revoke(client: Client, token_id: int) -> None:
    """Revoke join token ID (workers that joined with it keep working)."""
    client.revoke_join_token(token_id)
    console.print(f"join token {token_id} revoked")


# ------------------------------------------------------------ workers


@click.group("workers", invoke_without_command=True)
@json_option
@connection_options
@click.pass_context
def workers_group(ctx: click.Context, as_json: bool) -> None:
    """List registered workers; admins: `pilot workers revoke|approve|trust|untrust ID`."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(workers_command, as_json=as_json)


@workers_group.command("revoke")
@click.argument("worker_id", type=int, metavar="WORKER_ID")
@connection_options
@pass_client
def workers_revoke(client: Client, worker_id: int) -> None:
    """Revoke a worker: its token is refused and its running tasks are requeued."""
    client.revoke_worker(worker_id)
    console.print(f"worker {worker_id} revoked; its tasks are queued again")


@workers_group.command("approve")
@click.argument("worker_id", type=int, metavar="WORKER_ID")
@connection_options
@pass_client
def workers_approve(client: Client, worker_id: int) -> None:
    """Let a worker waiting for approval (joined with a join token made with --approval)
    get tasks."""
    client.approve_worker(worker_id)
    console.print(f"worker {worker_id} approved; it gets tasks from now on")


@workers_group.command("trust")
@click.argument("worker_id", type=int, metavar="WORKER_ID")
@connection_options
@pass_client
def workers_trust(client: Client, worker_id: int) -> None:
    """Vouch for a worker: its sandbox claim is believed (jobs with --require-sandbox
    run on it), its word that a retry cannot help is final, and its failures count
    against itself only, not its join token."""
    client.trust_worker(worker_id)
    console.print(f"worker {worker_id} is trusted")


@workers_group.command("untrust")
@click.argument("worker_id", type=int, metavar="WORKER_ID")
@connection_options
@pass_client
def workers_untrust(client: Client, worker_id: int) -> None:
    """Take back `pilot workers trust ID`: the worker's claims are claims again."""
    client.trust_worker(worker_id, trusted=False)
    console.print(f"worker {worker_id} is no longer trusted")
