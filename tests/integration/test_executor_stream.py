"""``GET /jobs/{id}/events?tasks=finished`` (``Client.finished_tasks``), what the Executor
follows its jobs through: finished tasks with their results, each once, the job's state
first, ``done`` at the end; resumed from ``since`` it sends only what finished near it;
another user's job is not found. On SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from parallel_pilot.client.sdk import Client
from parallel_pilot.coordinator import task_stream
from parallel_pilot.errors import NotFound
from tests.integration import trusted
from tests.integration.conftest import Coordinator
from tests.integration.test_lease_protocol import API, lease, report, submit_sleep


@pytest.fixture
def client(coordinator: Coordinator) -> Iterator[Client]:
    with Client("http://testserver", coordinator.admin_token,
                transport=coordinator.client._transport, retry_seconds=0) as c:
        yield c


def complete(coord: Coordinator, worker: dict[str, str], task: dict, value: int) -> None:
    r = report(coord, worker, task, "complete", result={"value": value})
    assert r.status_code == 200, r.text


def test_finished_tasks_come_with_results_once_then_done(coordinator: Coordinator,
                                                         client: Client) -> None:
    coord = coordinator
    job_id = submit_sleep(coord, tasks=3)
    worker = coord.register_worker()
    held = lease(coord, worker, slots=3)
    complete(coord, worker, held[0], 0)
    coord.clock.advance(task_stream.OVERLAP_SECONDS + 1)  # the next ones finish later
    complete(coord, worker, held[1], 1)
    # a running job: its state, then the finished tasks; the stream ends at its limit
    events = list(client.finished_tasks(job_id, seconds=0.3))
    assert [e for e, _ in events] == ["job", "tasks"]
    assert events[0][1][0] == "running"
    tasks, since = events[1][1]
    assert [(t.id, t.result) for t in tasks] == [(held[0]["task_id"], {"value": 0}),
                                                 (held[1]["task_id"], {"value": 1})]
    assert since is not None

    complete(coord, worker, held[2], 2)
    events = list(client.finished_tasks(job_id, since=since, seconds=30))
    assert [e for e, _ in events] == ["job", "tasks", "done"]
    assert events[0][1][0] == "completed"
    tasks, _ = events[1][1]
    # resumed: the task finished long before `since` is not sent again; the newest one
    # before it is (within the overlap), and the new one
    assert [t.id for t in tasks] == [held[1]["task_id"], held[2]["task_id"]]
    assert tasks[1].result == {"value": 2}

    # from the start: every finished task, once
    events = list(client.finished_tasks(job_id, seconds=30))
    sent = [t.id for e, d in events if e == "tasks" for t in d[0]]
    assert sorted(sent) == sorted(t["task_id"] for t in held) and events[-1][0] == "done"


def test_a_failed_job_sends_its_error_and_cancelled_tasks(coordinator: Coordinator,
                                                          client: Client) -> None:
    coord = coordinator
    job_id = submit_sleep(coord, tasks=2)
    worker = trusted.register(coord, "vouched", trusted=True)  # its word is final
    task = lease(coord, worker)[0]
    r = report(coord, worker, task, "fail", reason="boom", retryable=False)
    assert r.status_code == 200, r.text
    events = list(client.finished_tasks(job_id, seconds=30))
    assert [e for e, _ in events] == ["job", "tasks", "done"]
    state, error = events[0][1]
    assert state == "failed" and "boom" in error
    assert sorted(t.state for t in events[1][1][0]) == ["cancelled", "failed"]


def test_another_users_job_is_not_found(coordinator: Coordinator, client: Client) -> None:
    coord = coordinator
    job_id = submit_sleep(coord)
    bob = coord.client.post(f"{API}/users", headers=coord.user(), json={"name": "bob"})
    assert bob.status_code == 200, bob.text
    with Client("http://testserver", bob.json()["token"], transport=coord.client._transport,
                retry_seconds=0) as bobs, pytest.raises(NotFound):
        list(bobs.finished_tasks(job_id, seconds=1))
    with pytest.raises(NotFound):
        list(client.finished_tasks(999_999, seconds=1))
