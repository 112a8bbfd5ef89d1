"""Attacks as real clients: a `pilot server` process on 127.0.0.1 over a real database
(SQLite and PostgreSQL), and hostile workers and users that speak plain HTTP to it.

- `coordinator`: parametrised over sqlite and postgres; a fresh database and data folder
  per test. `coordinator.user("mallory")` makes a user and returns a `Client` with its
  token; `coordinator.admin` is the admin's; `coordinator.worker("w1", slots=1)` registers
  a `HostileWorker` with the farm's join token.
- `HostileWorker`: a worker written by an attacker: it says what it likes about itself and
  sends whatever bytes it wants, through the same endpoints as a real worker.

Every test ends by checking `coordinator.healthy()`: the server answers /health and the
admin's job list, so an attack that leaves the server broken for others fails its test.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from parallel_pilot.client.local_cluster import LocalCluster

API = "/api/v1"


@dataclass
class Client:
    """An HTTP client with one bearer token (a user's or a worker's)."""

    url: str
    token: str
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url + API, timeout=30,
                                 headers={"Authorization": f"Bearer {self.token}"})

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request that must succeed."""
        response = self.request(method, path, **kwargs)
        assert response.status_code < 400, \
            f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def upload(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.ok("PUT", f"/blobs/{sha}", content=data,
                headers={"Content-Type": "application/octet-stream"})
        return sha

    def submit(self, kind: str, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return self.ok("POST", "/jobs", json={"kind": kind, "params": params, **fields})

    def close(self) -> None:
        self.http.close()


@dataclass
class HostileWorker(Client):
    worker_id: int = 0

    def sync(self, **body: Any) -> dict[str, Any]:
        return self.ok("POST", "/workers/sync", json=body)

    def take(self, count: int = 1, **body: Any) -> list[dict[str, Any]]:
        """Leases for up to ``count`` tasks (free slots as asked, no wait)."""
        return self.sync(free_slots=count, **body)["tasks"]


@dataclass
class Coordinator:
    cluster: LocalCluster
    database: str
    admin: Client
    clients: list[Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def join_token(self) -> str:
        return self.cluster.join_token

    def user(self, name: str) -> Client:
        created = self.admin.ok("POST", "/users", json={"name": name})
        client = Client(self.url, created["token"])
        self.clients.append(client)
        return client

    def register(self, name: str, *, join_token: str | None = None, slots: int = 1,
                 kinds: list[str] | None = None, **capabilities: Any) -> httpx.Response:
        """The raw register request (for tests of what registration accepts)."""
        body = {"join_token": join_token or self.join_token, "name": name,
                "capabilities": {"cpu_cores": 1, "ram_bytes": 2**30, "slots": slots,
                                 "kinds": kinds or ["sweep", "python"], **capabilities}}
        return httpx.post(f"{self.url}{API}/workers/register", json=body, timeout=30)

    def worker(self, name: str, **kwargs: Any) -> HostileWorker:
        response = self.register(name, **kwargs)
        assert response.status_code == 200, response.text
        reply = response.json()
        worker = HostileWorker(self.url, reply["worker_token"], worker_id=reply["worker_id"])
        self.clients.append(worker)
        return worker

    def healthy(self) -> None:
        """The server still answers, for its admin, with no server error."""
        assert self.admin.request("GET", "/health").status_code == 200
        jobs = self.admin.request("GET", "/jobs")
        assert jobs.status_code == 200, jobs.text
        assert self.cluster.server is not None and self.cluster.server.poll() is None


@contextlib.contextmanager
def running_coordinator(data_dir: Path, database: str, url: str,
                        **settings: object) -> Iterator[Coordinator]:
    """A `pilot server` on ``url`` with ``settings`` as its ``PILOT_*`` variables
    (``max_body_bytes=1000`` -> ``PILOT_MAX_BODY_BYTES=1000``); checked healthy at the end."""
    env = {"PILOT_TOKEN": "", **{f"PILOT_{k.upper()}": str(v) for k, v in settings.items()}}
    cluster = LocalCluster(data_dir, workers=0, env=env,
                           server_args=["--database-url", url, "--lease-seconds", "30"])
    cluster.start_server()
    coord = Coordinator(cluster, database, Client(cluster.url, cluster.admin_token))
    try:
        yield coord
        coord.healthy()
    finally:
        for client in [coord.admin, *coord.clients]:
            client.close()
        cluster.stop()


DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
def coordinator(request: pytest.FixtureRequest, tmp_path: Path,
                fresh_database: Callable[..., str]) -> Iterator[Coordinator]:
    with running_coordinator(tmp_path / "data", request.param,
                             fresh_database(request.param, migrated=True)) as coord:
        yield coord
