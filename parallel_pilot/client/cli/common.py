"""What every ``pilot`` command shares: the command group that turns ``PilotError`` into
``error: …`` on stderr, the ``--server/--token`` options, the ``Client`` factory (which
tests replace), JSON output and small formatters."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import httpx
from pydantic import BaseModel
from rich.console import Console

from parallel_pilot.client.sdk import Client
from parallel_pilot.core.requirements import (
    ACCEPTED_TERMS,
    RequirementsSyntaxError,
    parse_requires,
)
from parallel_pilot.core.settings import ClientSettings
from parallel_pilot.core.urls import normalize_servers
from parallel_pilot.errors import InvalidInput, PilotError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1  # a command failed (coordinator error, job not completed, timeout)
EXIT_USAGE = 2  # the command line is wrong (unknown kind, missing file, bad option)

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class UsageFailure(click.ClickException):
    """A wrong command line found after parsing (a missing file, an unknown kind)."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class CommandFailure(click.ClickException):
    """A command that ran but failed; the message goes to stderr as ``error: …``."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class PilotGroup(click.Group):
    """Runs a subcommand and reports a ``PilotError`` as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PilotError as exc:
            raise CommandFailure(exc.message) from None
        except TimeoutError as exc:
            raise CommandFailure(str(exc) or "timed out") from None
        except httpx.HTTPError as exc:  # e.g. a read timeout, which Connection passes through
            raise CommandFailure(f"talking to the coordinator failed: "
                                 f"{type(exc).__name__}: {exc}") from None


class CliState:
    """Built once at the entry point and handed to every command through the context."""

    def __init__(self, settings: ClientSettings | None = None) -> None:
        self._settings = settings
        self.server: str | None = None
        self.token: str | None = None
        # submitting commands work here first (hashing, Blender): ask the coordinator
        # before that, so that a missing one is said at once, not after minutes
        self.reach_first = False

    @property
    def settings(self) -> ClientSettings:
        if self._settings is None:
            self._settings = ClientSettings()
        return self._settings


def state() -> CliState:
    return click.get_current_context().ensure_object(CliState)


def default_make_client(server: str | None, token: str | None,
                        settings: ClientSettings) -> Client:
    return Client(server, token, settings=settings)


# the one place commands get a Client from; tests replace it with one on a MockTransport
make_client: Callable[[str | None, str | None, ClientSettings], Client] = default_make_client


def get_client() -> Client:
    st = state()
    client = make_client(st.server, st.token, st.settings)
    # a long wait riding out a coordinator restart says so, above any progress bar
    client.connection.notify = notice
    click.get_current_context().call_on_close(client.close)
    if st.reach_first:
        client.health()
    return client


def notice(line: str) -> None:
    """One line on stderr that is not an error (a lost or regained coordinator)."""
    err_console.print(line, markup=False)


def server_url(value: str | Sequence[str], option: str = "--server") -> str:
    """``--server`` as coordinator URLs (``host:port`` gets ``http://``; several, for one
    farm's coordinators, separated by commas), or a usage error that says how to write it."""
    try:
        return normalize_servers(value, source=option)
    except InvalidInput as exc:
        raise UsageFailure(exc.message) from None


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if name == "server":  # repeated, or URLs separated by commas
            value = server_url(value) if value else None
        if value is not None:
            setattr(ctx.ensure_object(CliState), name, value)
        return value
    return callback


def connection_options(f: F) -> F:
    """``--server`` and ``--token`` for commands that talk to a coordinator as a user."""
    f = click.option("--token", metavar="TOKEN", expose_value=False, callback=_store("token"),
                     help="API token (default: PILOT_TOKEN, then the saved login).")(f)
    f = click.option("--server", metavar="URL", expose_value=False, callback=_store("server"),
                     multiple=True,
                     help="Coordinator URL (default: PILOT_SERVER, then the saved login); "
                          "repeat it for several coordinators of one farm: the next is "
                          "tried when one cannot be reached.")(f)
    return f


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print only JSON on stdout.")(f)


def parse_requires_option(ctx: click.Context, param: click.Parameter,
                          value: tuple[str, ...]) -> dict[str, Any]:
    """``--requires`` (repeatable, comma-separated terms) -> requirement fields; a bad
    term is a usage error naming it and listing the accepted ones."""
    try:
        return parse_requires(",".join(value))
    except RequirementsSyntaxError as exc:
        raise click.BadParameter(exc.message, ctx=ctx, param=param) from None


def submit_options(f: F) -> F:
    """--requires, --priority, --no-wait, --wait-timeout and --json, shared by the
    submitting commands; their ``get_client()`` checks that the coordinator answers before
    anything else."""
    command = f

    @functools.wraps(command)
    def reaching_first(*args: Any, **kwargs: Any) -> Any:
        state().reach_first = True
        return command(*args, **kwargs)

    f = reaching_first  # type: ignore[assignment]
    f = json_option(f)
    f = click.option("--wait-timeout", type=click.FloatRange(min=0),
                     help="Stop waiting after this many seconds (the job keeps running).")(f)
    f = click.option("--no-wait", is_flag=True, help="Submit and return at once.")(f)
    f = click.option("--requires", "requires", multiple=True, metavar="TERMS",
                     callback=parse_requires_option,
                     help="What a worker must have to run the tasks, e.g. "
                          "gpu,vram>=8G,ram>=16G,cores>=4,tag=studio-a,blender>=4.2,sandbox "
                          "(terms: " + ", ".join(ACCEPTED_TERMS) + "; sizes in binary "
                          "units). Only workers that meet all of it get the tasks; pilot "
                          "show says why a job waits.")(f)
    return click.option("--priority", type=click.IntRange(-100, 100), default=0,
                        show_default=True,
                        help="Your jobs with a higher priority run first (users share the "
                        "farm fairly, whatever their priorities).")(f)


def print_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    click.echo(json.dumps(data, indent=2))


def split_list(value: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    if not value:
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def ago(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None:
        return "-"
    seconds = max(0.0, (now or time.time()) - timestamp)
    return f"{duration(seconds)} ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def interactive() -> bool:
    return sys.stderr.isatty()


def pass_client(f: F) -> F:
    """Hand the command a ``Client`` as its first argument."""
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(get_client(), *args, **kwargs)
    return wrapper  # type: ignore[return-value]
