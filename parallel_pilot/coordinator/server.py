"""``serve``: run the coordinator under uvicorn until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import sys

import uvicorn

from parallel_pilot.coordinator.app import build_services, create_app
from parallel_pilot.coordinator.bootstrap import (
    ADMIN_PASSWORD_FILE,
    ADMIN_TOKEN_FILE,
    JOIN_TOKEN_FILE,
    ensure_admin,
)
from parallel_pilot.core.settings import CoordinatorSettings

log = logging.getLogger("pilot.coordinator")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def serve(settings: CoordinatorSettings) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    services = build_services(settings)
    first = ensure_admin(services)
    url = f"http://{settings.host}:{settings.port}"
    print(f"Parallel Pilot coordinator on {url}", flush=True)
    print(f"  database: {_redact(settings.resolved_database_url())}", flush=True)
    print(f"  blobs:    {settings.blob_dir.resolve()}", flush=True)
    if first is not None:
        print("  first start: created user 'admin'", flush=True)
    admin_file = settings.data_dir / ADMIN_TOKEN_FILE
    join_file = settings.data_dir / JOIN_TOKEN_FILE
    if admin_file.exists():
        print(f"  admin API token:   {admin_file.resolve()}", flush=True)
    password_file = settings.data_dir / ADMIN_PASSWORD_FILE
    if password_file.exists():
        print(f"  admin password:    {password_file.resolve()}", flush=True)
    if join_file.exists():
        print(f"  worker join token: {join_file.resolve()}", flush=True)
        print(f"  join a worker:     pilot worker --server {url} --join-token "
              f"\"$(cat {join_file.resolve()})\"", flush=True)
    app = create_app(services)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                timeout_keep_alive=75)
