"""``GET /api/v1/jobs/{id}/events`` and ``Client.watch``: the job pushed as it changes,
``done`` once it has finished, 404 for a job the caller may not see."""

from __future__ import annotations

import pytest

from parallel_pilot.client.sdk import Client
from parallel_pilot.coordinator import sse
from parallel_pilot.errors import NotFound
from tests.integration.conftest import Coordinator
from tests.integration.test_lease_protocol import API, lease, report, submit_sleep


@pytest.fixture
def client(sqlite_coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sse, "POLL_SECONDS", 0.02)
    with Client("http://testserver", sqlite_coordinator.admin_token,
                transport=sqlite_coordinator.client._transport, retry_seconds=0) as c:
        yield c


def test_stream_sends_the_job_then_changes_then_done(sqlite_coordinator: Coordinator,
                                                     client: Client) -> None:
    coord = sqlite_coordinator
    job_id = submit_sleep(coord, tasks=2)
    coord.services.settings.max_event_stream_seconds = 0.2  # caps what a client asks for
    events = list(client.connection.events(f"/jobs/{job_id}/events", params={"seconds": 600}))
    # an unchanged job is sent once; the stream ends at its time limit without "done"
    assert [name for name, _ in events] == ["job"]
    assert events[0][1]["job"]["state"] == "queued"

    worker = coord.register_worker()
    tasks = lease(coord, worker, slots=2)
    for task in tasks:
        assert report(coord, worker, task, "complete", result={}).status_code == 200
    seen = list(client.watch(job_id, timeout=30))
    assert seen[-1].state == "completed" and seen[-1].tasks_done == 2
    events = list(client.connection.events(f"/jobs/{job_id}/events", params={"seconds": 5}))
    assert [name for name, _ in events] == ["job", "done"]


def test_watch_follows_a_running_job_to_its_end(sqlite_coordinator: Coordinator,
                                               client: Client) -> None:
    coord = sqlite_coordinator
    job_id = submit_sleep(coord)
    worker = coord.register_worker()
    (task,) = lease(coord, worker)
    watched = client.watch(job_id, timeout=30)
    assert next(watched).state == "running"
    assert report(coord, worker, task, "complete", result={}).status_code == 200
    rest = list(watched)
    assert rest and rest[-1].state == "completed"


def test_events_of_another_users_or_no_job_are_not_found(sqlite_coordinator: Coordinator,
                                                         client: Client) -> None:
    coord = sqlite_coordinator
    job_id = submit_sleep(coord)
    bob = coord.client.post(f"{API}/users", headers=coord.user(), json={"name": "bob"})
    assert bob.status_code == 200, bob.text
    with Client("http://testserver", bob.json()["token"], transport=coord.client._transport,
                retry_seconds=0) as bobs:
        with pytest.raises(NotFound):
            list(bobs.watch(job_id, timeout=5))
    with pytest.raises(NotFound):
        list(client.watch(999_999, timeout=5))
    bad = coord.client.get(f"{API}/jobs/{job_id}/events", params={"seconds": 0},
                           headers=coord.user())
    assert bad.status_code in (400, 422) and "seconds" in bad.text
