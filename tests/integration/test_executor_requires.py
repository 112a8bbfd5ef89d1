"""``Executor(requires=...)`` and the SDK's ``requirements=`` reach the coordinator in the
``--requires`` syntax (the real app, in process); ``requirements=`` keeps meaning the
Python packages a call needs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from parallel_pilot.client.executor import Executor
from parallel_pilot.client.sdk import Client
from parallel_pilot.core.requirements import GIB, RequirementsSyntaxError
from tests.integration.conftest import Coordinator
from tests.integration.test_sync import register_with_id

SIX = [{"name": "NVIDIA RTX 2060", "memory_bytes": 6 * GIB}]


def _client(coordinator: Coordinator) -> Client:
    return Client("http://testserver", coordinator.admin_token,
                  transport=coordinator.client._transport, retry_seconds=0)


@pytest.fixture
def client(coordinator: Coordinator) -> Iterator[Client]:
    with _client(coordinator) as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_coordinator: Coordinator) -> Iterator[Client]:
    with _client(sqlite_coordinator) as c:
        yield c


def _first_job(client: Client, seconds: float = 20.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        jobs = client.jobs()
        if jobs:
            return jobs[0].id
        time.sleep(0.05)
    raise AssertionError("the Executor submitted no job")


def test_the_executor_sends_its_worker_requirements(sqlite_coordinator: Coordinator,
                                                    sqlite_client: Client) -> None:
    # What the Executor sends does not depend on the database, so SQLite only: once on
    # MariaDB under a loaded suite, the in-process app's shutdown hung after this test
    # (the Executor's stream of finished tasks through the TestClient; not seen again)
    coordinator, client = sqlite_coordinator, sqlite_client
    register_with_id(coordinator, "six", kinds=["python"], gpus=SIX)
    pool = Executor(client=client, requires="gpu,vram>=8G", requirements=("json",))
    try:
        pool.submit(sum, [1, 2])
        job_id = _first_job(client)
        assert client.job(job_id).waiting_reason == (
            "waiting: no online worker has a GPU with >= 8 GiB; 1 worker has a GPU with 6 GiB")
        assert client.job(job_id).params["packages"] == ["json"]  # still the packages
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # its threads end before the app


def test_a_bad_requires_fails_at_the_executor(client: Client) -> None:
    with pytest.raises(RequirementsSyntaxError, match="'vrm>=8G'"):
        Executor(client=client, requires="vrm>=8G")


def test_the_sdk_takes_text_or_fields(coordinator: Coordinator, client: Client) -> None:
    register_with_id(coordinator, "six", gpus=SIX)
    by_text = client.submit("sleep", {"tasks": 1, "milliseconds": 0},
                            requirements="tag=studio-a")
    by_fields = client.submit("sleep", {"tasks": 1, "milliseconds": 0},
                              requirements={"min_vram_bytes": 8 * GIB})
    assert client.job(by_text.id).waiting_reason == (
        "waiting: no online worker has tag studio-a; 1 worker has no tags")
    assert client.job(by_fields.id).waiting_reason.startswith(
        "waiting: no online worker has a GPU with >= 8 GiB")
