"""Worker loss is not task failure, and a failure that repeats fails fast (issue 15),
through the real API (the worker exchange) on SQLite, PostgreSQL and MariaDB with a fake
clock: a lost lease requeues without using an attempt and under a new attempt number;
losses are capped; a worker that failed a job's tasks gets no more of that job; the same
failure on two voices fails the task at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parallel_pilot.coordinator.services import leasing
from tests.integration import trusted
from tests.integration.conftest import Coordinator, make_coordinator
from tests.integration.test_sync import (
    job,
    refs,
    register,
    register_with_id,
    submit,
    sync_,
    tasks_of,
)

API = "/api/v1"


def expire(coord: Coordinator) -> int:
    coord.clock.advance(coord.services.settings.lease_seconds + 1)
    return leasing.reap(coord.services)


def failed(lease: dict[str, Any], reason: str, retryable: bool = True) -> dict[str, Any]:
    return {"task_id": lease["task_id"], "attempt": lease["attempt"], "outcome": "failed",
            "reason": reason, "retryable": retryable}


def the_task(coord: Coordinator, job_id: int) -> dict[str, Any]:
    [task] = tasks_of(coord, job_id)
    return task


def test_a_lost_lease_requeues_without_using_an_attempt(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=1, max_attempts=1)  # one failure would end it
    workers = [register(coord, f"w{i}") for i in range(6)]
    stale: list[dict[str, Any]] = []
    for n, worker in enumerate(workers[:5], start=1):
        [lease] = sync_(coord, worker, free_slots=1)["tasks"]
        assert lease["attempt"] == n  # the lease number goes up whatever ended the last
        stale.append(lease)
        assert expire(coord) == 1  # the worker vanished
        task = the_task(coord, job_id)
        assert (task["state"], task["failures"], task["losses"]) == ("ready", 0, n)
        assert job(coord, job_id)["state"] == "running"
    # a vanished worker is not blamed: the first one may take the job's tasks again
    [again] = sync_(coord, workers[0], free_slots=1)["tasks"]
    assert again["attempt"] == 6
    # a stale attempt that comes back is still fenced off
    late = sync_(coord, workers[1], reports=[{**refs(stale[1:2])[0], "outcome": "completed",
                                              "result": {}}])
    assert late["verdicts"][0]["accepted"] is False
    assert "not the current one" in late["verdicts"][0]["reason"]
    answer = sync_(coord, workers[0], reports=[{**refs([again])[0], "outcome": "completed",
                                                "result": {"ok": 1}}])
    assert answer["verdicts"][0]["accepted"] is True
    assert job(coord, job_id)["state"] == "completed"
    logs = coord.client.get(f"{API}/jobs/{job_id}/logs", headers=coord.user()).json()["lines"]
    assert sum("expired (worker lost)" in line["line"] for line in logs) == 5


def test_leaving_revoked_and_restarted_workers_use_no_attempt(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=1, max_attempts=1)
    # leaving
    worker = register(coord, "leaver")
    [lease] = sync_(coord, worker, free_slots=1)["tasks"]
    sync_(coord, worker, leaving=True, held=refs([lease]))
    assert (the_task(coord, job_id)["failures"], the_task(coord, job_id)["losses"]) == (0, 1)
    # revoked by an admin
    worker, worker_id = register_with_id(coord, "revoked")
    [lease] = sync_(coord, worker, free_slots=1)["tasks"]
    assert coord.client.post(f"{API}/workers/{worker_id}/revoke",
                             headers=coord.user()).status_code == 200
    task = the_task(coord, job_id)
    assert (task["state"], task["failures"], task["losses"]) == ("ready", 0, 2)
    # restarted: the process comes back with its identity; what the row held is requeued
    r = coord.client.post(f"{API}/workers/register", json={
        "join_token": coord.join_token, "name": "restarts",
        "capabilities": {"cpu_cores": 2, "ram_bytes": 2**30, "kinds": ["sleep"]}})
    first = r.json()
    headers = {"Authorization": f"Bearer {first['worker_token']}"}
    [lease] = sync_(coord, headers, free_slots=1)["tasks"]
    back = coord.client.post(f"{API}/workers/register", json={
        "join_token": coord.join_token, "name": "restarts", "worker_id": first["worker_id"],
        "worker_token": first["worker_token"],
        "capabilities": {"cpu_cores": 2, "ram_bytes": 2**30, "kinds": ["sleep"]}})
    assert back.status_code == 200 and back.json()["worker_id"] == first["worker_id"]
    task = the_task(coord, job_id)
    assert (task["state"], task["failures"], task["losses"]) == ("ready", 0, 3)
    # a failure the task reports still uses its one attempt
    headers = {"Authorization": f"Bearer {back.json()['worker_token']}"}
    [lease] = sync_(coord, headers, free_slots=1)["tasks"]
    assert lease["attempt"] == 4
    sync_(coord, headers, reports=[failed(lease, "it broke")])
    info = job(coord, job_id)
    assert info["state"] == "failed" and "after 1 attempts" in info["error"]


def test_a_task_lost_too_often_fails_saying_so(migrated_database_url: str, tmp_path: Path) -> None:
    coord = make_coordinator(migrated_database_url, tmp_path, max_losses=3)
    with coord.client:
        job_id = submit(coord, tasks=1)
        worker = register(coord, "w")
        for n in (1, 2):
            sync_(coord, worker, free_slots=1)
            assert expire(coord) == 1
            assert job(coord, job_id)["state"] == "running", n
        sync_(coord, worker, free_slots=1)
        assert expire(coord) == 1
        task = the_task(coord, job_id)
        assert (task["state"], task["failures"], task["losses"]) == ("failed", 0, 3)
        info = job(coord, job_id)
        assert info["state"] == "failed"
        assert "lost 3 times with its worker (at most 3, max_losses)" in info["error"]
        # a retry by its owner starts the count afresh
        assert coord.client.post(f"{API}/jobs/{job_id}/retry",
                                 headers=coord.user()).status_code == 200
        assert the_task(coord, job_id)["losses"] == 0
    coord.services.engine.dispose()


def test_a_worker_that_failed_a_jobs_tasks_gets_no_more_of_it(coordinator: Coordinator,
                                                              ) -> None:
    coord = coordinator
    block = coord.services.settings.worker_block_failures
    bad_job = submit(coord, tasks=block + 3, max_attempts=10, priority=5)
    other_job = submit(coord, tasks=3)
    worker = register(coord, "flaky")
    for n in range(block):
        [lease] = sync_(coord, worker, free_slots=1)["tasks"]
        assert lease["job_id"] == bad_job, n
        # one voice (the same worker) with the same reason never fails the task fast
        sync_(coord, worker, reports=[failed(lease, f"out of memory at step {n}")])
    got = sync_(coord, worker, free_slots=3)["tasks"]
    assert got and {t["job_id"] for t in got} == {other_job}
    assert job(coord, bad_job)["state"] == "running"
    # a worker of another join token still gets the job's tasks
    other = trusted.register(coord, "other", join_token=trusted.new_join_token(coord))
    more = sync_(coord, other, free_slots=1)["tasks"]
    assert [t["job_id"] for t in more] == [bad_job]


def test_lost_leases_do_not_block_the_worker(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=1, max_attempts=1)
    worker = register(coord, "comes-and-goes")
    for _ in range(coord.services.settings.worker_block_failures + 1):
        [lease] = sync_(coord, worker, free_slots=1)["tasks"]
        assert lease["job_id"] == job_id
        assert expire(coord) == 1


def test_a_scene_error_on_two_voices_fails_the_job_fast(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=1, max_attempts=5)
    first = trusted.register(coord, "first", join_token=trusted.new_join_token(coord))
    second = trusted.register(coord, "second", join_token=trusted.new_join_token(coord))
    [lease] = sync_(coord, first, free_slots=1)["tasks"]
    sync_(coord, first, reports=[failed(
        lease, "Error: Cannot read file '/home/ann/.cache/pilot/t/17/scene.blend' (line 42)")])
    assert job(coord, job_id)["state"] == "running"
    [lease] = sync_(coord, second, free_slots=1)["tasks"]
    assert lease["attempt"] == 2
    sync_(coord, second, reports=[failed(
        lease, "Error: Cannot read file '/srv/w2/cache/t/9/scene.blend' (line 43)")])
    info = job(coord, job_id)
    assert info["state"] == "failed", info
    assert "the same way on 2 workers of different join tokens" in info["error"]
    task = the_task(coord, job_id)
    assert (task["state"], task["attempt"], task["failures"]) == ("failed", 2, 2)


def test_different_reasons_or_one_voice_do_not_fail_fast(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=1, max_attempts=6)
    # two workers of one join token are one voice: the same reason twice is retried
    for name in ("a", "b"):
        worker = register(coord, name)
        [lease] = sync_(coord, worker, free_slots=1)["tasks"]
        sync_(coord, worker, reports=[failed(lease, "segfault in cycles")])
    assert job(coord, job_id)["state"] == "running"
    # another voice with another reason: still retried
    other = trusted.register(coord, "c", join_token=trusted.new_join_token(coord))
    [lease] = sync_(coord, other, free_slots=1)["tasks"]
    sync_(coord, other, reports=[failed(lease, "disk full")])
    assert job(coord, job_id)["state"] == "running"
    # a trusted worker of the first join token speaks for itself: it agrees, so it ends
    vouched = trusted.register(coord, "d", trusted=True)
    [lease] = sync_(coord, vouched, free_slots=1)["tasks"]
    assert lease["attempt"] == 4
    sync_(coord, vouched, reports=[failed(lease, "Segfault in Cycles")])
    info = job(coord, job_id)
    assert info["state"] == "failed" and "the same way on 2 workers" in info["error"]
    assert the_task(coord, job_id)["failures"] == 4  # not 6
