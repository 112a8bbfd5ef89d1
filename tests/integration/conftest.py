"""An in-process coordinator (the real FastAPI app over a real database) for API tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from parallel_pilot.coordinator.app import build_services, create_app
from parallel_pilot.coordinator.bootstrap import ensure_admin
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.core.settings import CoordinatorSettings


@dataclass
class FakeClock:
    """Time that moves only when a test says so (for lease expiry)."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Coordinator:
    client: TestClient
    services: Services
    clock: FakeClock
    admin_token: str
    join_token: str
    data_dir: Path
    _workers: int = field(default=0)

    def user(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    def register_worker(self, kinds: list[str] | None = None, name: str | None = None,
                        ) -> dict[str, str]:
        self._workers += 1
        response = self.client.post("/api/v1/workers/register", json={
            "join_token": self.join_token, "name": name or f"w{self._workers}",
            "capabilities": {"cpu_cores": 2, "ram_bytes": 2**30,
                             "kinds": kinds or ["sleep", "sweep"]},
        })
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['worker_token']}"}


def make_coordinator(database_url: str, tmp_path: Path, **overrides: object) -> Coordinator:
    settings = CoordinatorSettings(data_dir=tmp_path / "data", database_url=database_url,
                                   long_poll_seconds=0.5, **overrides)
    clock = FakeClock()
    services = build_services(settings, clock=clock)
    ensure_admin(services)
    admin = (settings.data_dir / "admin-token").read_text().strip()
    join = (settings.data_dir / "join-token").read_text().strip()
    client = TestClient(create_app(services, run_reaper=False))
    return Coordinator(client, services, clock, admin, join, settings.data_dir)


@pytest.fixture
def coordinator(migrated_database_url: str, tmp_path: Path) -> Iterator[Coordinator]:
    coord = make_coordinator(migrated_database_url, tmp_path)
    with coord.client:
        yield coord
    coord.services.engine.dispose()


@pytest.fixture
def sqlite_coordinator(tmp_path: Path,
                       fresh_database: Callable[..., str]) -> Iterator[Coordinator]:
    coord = make_coordinator(fresh_database("sqlite", migrated=True), tmp_path)
    with coord.client:
        yield coord
    coord.services.engine.dispose()
