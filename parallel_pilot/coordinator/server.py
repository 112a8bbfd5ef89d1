"""``serve``: run the coordinator under uvicorn until SIGTERM or Ctrl-C.

The listening socket is bound first, before the database is touched or anything is
printed, so a port that is in use is refused at once (``CannotListen``) instead of after
a first start wrote tokens for a coordinator that never ran.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import sys
from collections.abc import Callable

import uvicorn

from parallel_pilot.coordinator.app import build_services, create_app
from parallel_pilot.coordinator.bootstrap import (
    ADMIN_PASSWORD_FILE,
    ADMIN_TOKEN_FILE,
    JOIN_TOKEN_FILE,
    ensure_admin,
)
from parallel_pilot.coordinator.log_context import JsonFormatter
from parallel_pilot.core.settings import CoordinatorSettings
from parallel_pilot.errors import CannotListen

log = logging.getLogger("pilot.coordinator")

PRIVATE_UMASK = 0o077  # what the coordinator writes (database, WAL, blobs) is its own only
LISTEN_BACKLOG = 2048  # pending connections the socket queues (uvicorn's default)
KEEP_ALIVE_SECONDS = 75  # idle keep-alive connections are closed after this
# on SIGTERM, seconds requests still open get before they are cut: an event stream (a
# dashboard tab, pilot wait) never ends by itself and would hold the stop forever
GRACEFUL_SHUTDOWN_SECONDS = 3


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (as uvicorn binds it: SO_REUSEADDR, so a port
    left in TIME_WAIT is fine, a listening one is not), or ``CannotListen``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(
                f"port {port} on {host} is in use (another coordinator or program listens "
                f"there); stop it or choose another port with --port") from None
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                           "check --host and --port") from None
    return sock


def serve(settings: CoordinatorSettings, *, instance_id: str | None = None) -> None:
    """Bind, bootstrap the admin on first start, then serve until stopped.

    ``instance_id`` is what ``GET /health`` names this process by (header
    ``X-Pilot-Instance``), so whoever started it can tell it from another coordinator on
    the same port; a random one by default."""
    os.umask(PRIVATE_UMASK)
    sock = listen_socket(settings.host, settings.port)
    try:
        _serve(settings, sock, instance_id or secrets.token_hex(8))
    finally:
        sock.close()


def configure_logging(log_format: str) -> None:
    """Text lines for people, or one JSON object a line (``log_context.JsonFormatter``)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _serve(settings: CoordinatorSettings, sock: socket.socket, instance_id: str) -> None:
    configure_logging(settings.log_format)
    services = build_services(settings)
    first = ensure_admin(services)
    # the banner: lines on stdout for people; records like any other in JSON mode
    say: Callable[[str], None] = log.info if settings.log_format == "json" \
        else lambda line: print(line, flush=True)
    port = int(sock.getsockname()[1])  # the real one when --port 0
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{port}"
    say(f"Parallel Pilot coordinator on {url}")
    say(f"  database: {_redact(settings.resolved_database_url())}")
    say(f"  blobs:    {settings.blob_dir.resolve()}")
    if first is not None:
        say("  first start: created user 'admin'")
    admin_file = settings.data_dir / ADMIN_TOKEN_FILE
    join_file = settings.data_dir / JOIN_TOKEN_FILE
    if admin_file.exists():
        say(f"  admin API token:   {admin_file.resolve()}")
    password_file = settings.data_dir / ADMIN_PASSWORD_FILE
    if password_file.exists():
        say(f"  admin password:    {password_file.resolve()}")
    if join_file.exists():
        say(f"  worker join token: {join_file.resolve()}")
        say(f"  join a worker:     pilot worker --server {url} --join-token "
            f"\"$(cat {join_file.resolve()})\"")
    app = create_app(services)
    app.state.instance_id = instance_id
    config = uvicorn.Config(app, host=settings.host, port=port, log_level="warning",
                            timeout_keep_alive=KEEP_ALIVE_SECONDS, backlog=LISTEN_BACKLOG,
                            # forwarded headers are believed only from --trusted-proxy
                            # (create_app), never from any loopback peer
                            proxy_headers=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        services.blobs.close()
