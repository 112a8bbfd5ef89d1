"""``pilot server`` and ``pilot worker``: run a coordinator or a worker in this process.

Both build their settings object here, once (flags over ``PILOT_*`` environment), and
import the coordinator or the worker only when run, so the rest of the CLI stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from parallel_pilot.client.cli.common import UsageFailure, split_list
from parallel_pilot.core.settings import CoordinatorSettings, WorkerSettings
from parallel_pilot.core.urls import split_servers
from parallel_pilot.errors import CannotListen, InvalidInput
from parallel_pilot.kinds.base import describe_validation


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@click.command("server")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8330).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Database, blobs and tokens (default ./pilot-data).")
@click.option("--database-url", metavar="URL",
              help="SQLAlchemy URL of PostgreSQL or MariaDB (default: SQLite in the data dir).")
@click.option("--lease-seconds", type=float, help="Seconds a lease lasts without a heartbeat.")
@click.option("--heartbeat-seconds", type=float, help="Seconds between worker heartbeats.")
@click.option("--chunk-seconds", type=float,
              help="Seconds a render chunk should take on its worker when the job gives no "
                   "chunk size (default 600).")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS",
              help="A reverse proxy (address or network) whose X-Forwarded-For is believed; "
                   "repeatable (default: none, the peer's address counts).")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="text (default): lines for people; json: one JSON object a line with "
                   "request, job, user and worker ids, and an access line per request.")
# set by LocalCluster (pilot up): GET /health names the process by it, so the parent knows
# it reached the coordinator it started and not another one on the same port
@click.option("--instance-id", hidden=True)
def server_command(instance_id: str | None, **flags: Any) -> None:
    """Run a coordinator until Ctrl-C or SIGTERM."""
    if not flags.get("trusted_proxies"):
        flags.pop("trusted_proxies", None)  # none given: the setting's environment or default
    else:
        flags["trusted_proxies"] = list(flags["trusted_proxies"])
    try:
        settings = CoordinatorSettings(**_given(**flags))
    except ValidationError as exc:
        raise UsageFailure(describe_validation(exc)) from None
    from parallel_pilot.coordinator.server import serve

    try:
        serve(settings, instance_id=instance_id)
    except CannotListen as exc:  # a port in use: one line, before anything else
        raise UsageFailure(exc.message) from None


def parse_allow(value: str) -> list[str]:
    """A comma-separated list of job kinds, each one this installation knows."""
    from parallel_pilot.kinds import check_allowed_kinds

    try:
        return check_allowed_kinds(split_list(value))
    except InvalidInput as exc:
        raise UsageFailure(f"--allow: {exc.message}") from None


def _servers(given: tuple[str, ...]) -> str | None:
    """``--server`` (repeated, or URLs separated by commas) as one comma-separated list."""
    if not given:
        return None
    try:
        return ",".join(split_servers(given, source="--server"))
    except InvalidInput as exc:
        raise UsageFailure(exc.message) from None


@click.command("worker")
@click.option("--server", metavar="URL", multiple=True,
              help="Coordinator URL (default http://127.0.0.1:8330). Several coordinators "
                   "of one farm: repeat it (or separate the URLs by commas); when one cannot "
                   "be reached the worker carries on through the next.")
@click.option("--join-token", metavar="TOKEN",
              help="Join token from the coordinator's data dir (or PILOT_JOIN_TOKEN).")
@click.option("--name", help="Worker name (default: host name).")
@click.option("--slots", type=click.IntRange(1, 64), help="Tasks run at once (default 1).")
@click.option("--allow", metavar="KINDS",
              help="Comma-separated job kinds this worker runs (default: render). sweep runs "
                   "arbitrary commands: allow it only for people you trust.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where input files are cached.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where tasks get their working directories.")
@click.option("--cache-bytes", type=click.IntRange(min=0),
              help="Bytes the input cache may hold (default 10 GiB).")
@click.option("--tags", metavar="TAGS", help="Comma-separated free-form tags.")
@click.option("--blender", metavar="PATH",
              help="A Blender executable to render with (default: the bpy package, else "
                   "blender on PATH).")
@click.option("--drain-seconds", type=click.FloatRange(min=0),
              help="Seconds running tasks get to finish on Ctrl-C/SIGTERM before they are "
                   "handed back (default 10).")
@click.option("--sandbox", is_flag=True,
              help="Run sweep commands inside bubblewrap (bwrap): no network, read-only "
                   "system, only the task's working directory writable.")
@click.option("--gpus", metavar="N[:MEM]",
              help="The GPUs this worker offers, told by hand instead of asking nvidia-smi: "
                   "2:8G is two GPUs of 8 GiB, 1:24G:nvidia,1:8G two kinds, 0 none. Jobs "
                   "with --requires gpu,vram>=8G are matched against it.")
@click.option("--render-sandbox/--no-render-sandbox", default=None,
              help="Render inside bubblewrap (bwrap): no network, read-only system and "
                   "project, none of this machine's home or cache visible, only the task "
                   "folder writable. On by default where bwrap works; --render-sandbox "
                   "fails where it does not.")
def worker_command(server: tuple[str, ...], join_token: str | None, name: str | None,
                   slots: int | None, allow: str | None, cache_dir: Path | None,
                   work_dir: Path | None, cache_bytes: int | None, tags: str | None,
                   blender: str | None, drain_seconds: float | None,
                   sandbox: bool, render_sandbox: bool | None, gpus: str | None) -> None:
    """Run a worker that pulls tasks from a coordinator until Ctrl-C or SIGTERM."""
    overrides = _given(server=_servers(server), join_token=join_token, name=name, slots=slots,
                       cache_dir=cache_dir, work_dir=work_dir, cache_bytes=cache_bytes,
                       drain_seconds=drain_seconds, blender=blender,
                       sandbox=sandbox or None, render_sandbox=render_sandbox)
    if allow is not None:
        overrides["allow"] = parse_allow(allow)
    if tags is not None:
        overrides["tags"] = split_list(tags)
    if gpus is not None:
        overrides["gpus"] = gpus
    try:
        settings = WorkerSettings(**overrides)
    except ValidationError as exc:
        raise UsageFailure(describe_validation(exc)) from None
    parse_allow(",".join(settings.allow))
    if settings.gpus is not None:
        from parallel_pilot.core.requirements import parse_gpus

        try:
            parse_gpus(settings.gpus)
        except InvalidInput as exc:
            raise UsageFailure(exc.message) from None
    if settings.sandbox:
        from parallel_pilot.kinds.sandbox import sandbox_unavailable_reason

        reason = sandbox_unavailable_reason()
        if reason is not None:
            raise UsageFailure(f"--sandbox: {reason}")
    if render_sandbox:  # asked for by name: fail rather than render unsandboxed
        from parallel_pilot.kinds.sandbox import sandbox_unavailable_reason

        reason = sandbox_unavailable_reason()
        if reason is not None:
            raise UsageFailure(f"--render-sandbox: {reason}")
    if not settings.join_token:
        raise UsageFailure("no join token: pass --join-token or set PILOT_JOIN_TOKEN "
                           "(the coordinator writes it to DATA_DIR/join-token)")
    from parallel_pilot.worker.agent import run_worker

    raise SystemExit(run_worker(settings))
