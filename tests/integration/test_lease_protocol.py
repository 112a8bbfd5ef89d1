"""The lease protocol through the real API on SQLite, PostgreSQL and MariaDB: claims,
heartbeats, fencing, expiry, max attempts, dependencies, cancel and retry."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from parallel_pilot.coordinator.services import leasing
from tests.integration import trusted
from tests.integration.conftest import Coordinator

API = "/api/v1"


def submit_sleep(coord: Coordinator, tasks: int = 1, ms: int = 0, **extra: object) -> int:
    r = coord.client.post(f"{API}/jobs", headers=coord.user(),
                          json={"kind": "sleep", "params": {"tasks": tasks, "milliseconds": ms},
                                **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def lease(coord: Coordinator, worker: dict[str, str], slots: int = 1, wait: float = 0) -> list:
    r = coord.client.post(f"{API}/workers/lease", headers=worker,
                          json={"slots": slots, "wait_seconds": wait})
    assert r.status_code == 200, r.text
    return r.json()["tasks"]


def report(coord: Coordinator, worker: dict[str, str], task: dict, what: str, **body: object):
    return coord.client.post(f"{API}/attempts/{task['task_id']}/{task['attempt']}/{what}",
                             headers=worker, json=body)


def job(coord: Coordinator, job_id: int) -> dict:
    r = coord.client.get(f"{API}/jobs/{job_id}", headers=coord.user())
    assert r.status_code == 200, r.text
    return r.json()


def test_job_runs_to_completion(coordinator: Coordinator) -> None:
    job_id = submit_sleep(coordinator, tasks=3)
    assert job(coordinator, job_id)["state"] == "queued"
    worker = coordinator.register_worker()
    leased = lease(coordinator, worker, slots=5)
    assert len(leased) == 3 and all(t["attempt"] == 1 for t in leased)
    assert job(coordinator, job_id)["state"] == "running"
    assert lease(coordinator, worker) == []
    for task in leased:
        hb = report(coordinator, worker, task, "heartbeat", progress=0.5, log_lines=["hi"])
        assert hb.json()["action"] == "continue"
        assert report(coordinator, worker, task, "complete", result={"ok": 1}).status_code == 200
    info = job(coordinator, job_id)
    assert info["state"] == "completed" and info["tasks_done"] == 3
    logs = coordinator.client.get(f"{API}/jobs/{job_id}/logs", headers=coordinator.user())
    assert [line["line"] for line in logs.json()["lines"]] == ["hi", "hi", "hi"]


def test_stale_attempt_is_refused_after_expiry(coordinator: Coordinator) -> None:
    job_id = submit_sleep(coordinator)
    w1, w2 = coordinator.register_worker(), coordinator.register_worker()
    [first] = lease(coordinator, w1)
    coordinator.clock.advance(coordinator.services.settings.lease_seconds + 1)
    assert leasing.reap(coordinator.services) == 1
    [second] = lease(coordinator, w2)
    assert second["task_id"] == first["task_id"] and second["attempt"] == 2
    # the first worker comes back: its heartbeat and report are refused
    assert report(coordinator, w1, first, "heartbeat").status_code == 409
    late = report(coordinator, w1, first, "complete", result={})
    assert late.status_code == 409 and late.json()["error"] == "stale_attempt"
    assert report(coordinator, w2, second, "complete", result={}).status_code == 200
    assert job(coordinator, job_id)["state"] == "completed"


def test_report_for_a_task_not_held(coordinator: Coordinator) -> None:
    submit_sleep(coordinator)
    w1, w2 = coordinator.register_worker(), coordinator.register_worker()
    [task] = lease(coordinator, w1)
    r = report(coordinator, w2, task, "complete", result={})
    assert r.status_code == 409 and "not held by this worker" in r.json()["message"]
    r = coordinator.client.post(f"{API}/attempts/999999/1/complete", headers=w1,
                                json={"result": {}})
    assert r.status_code == 404 and r.json()["error"] == "task_not_found"


def test_task_fails_after_max_attempts(coordinator: Coordinator) -> None:
    job_id = submit_sleep(coordinator, max_attempts=2)
    workers = [coordinator.register_worker() for _ in range(3)]
    for worker in workers[:2]:
        [task] = lease(coordinator, worker)
        assert report(coordinator, worker, task, "fail", reason="boom").status_code == 200
    info = job(coordinator, job_id)
    assert info["state"] == "failed"
    assert "boom" in info["error"] and "after 2 attempts" in info["error"]
    assert lease(coordinator, workers[2]) == []


def test_non_retryable_failure_of_a_trusted_worker_fails_at_once(
        coordinator: Coordinator) -> None:
    job_id = submit_sleep(coordinator, tasks=2)
    worker = trusted.register(coordinator, "vouched", trusted=True)
    task = lease(coordinator, worker)[0]
    report(coordinator, worker, task, "fail", reason="bad scene", retryable=False)
    info = job(coordinator, job_id)
    assert info["state"] == "failed" and info["task_counts"].get("cancelled") == 1
    assert "a retry cannot help" in info["error"] and info["retryable"] is False


def test_non_retryable_failure_is_final_when_another_join_token_agrees(
        coordinator: Coordinator) -> None:
    job_id = submit_sleep(coordinator, tasks=2, max_attempts=5)
    first = coordinator.register_worker()
    [task] = lease(coordinator, first)
    report(coordinator, first, task, "fail", reason="bad scene", retryable=False)
    info = job(coordinator, job_id)  # one untrusted worker's word: one failed attempt
    assert info["state"] == "running", info
    # a new registration with the same join token is the same voice
    again = coordinator.register_worker()
    [retry] = lease(coordinator, again, slots=2)[:1]
    assert retry["task_id"] == task["task_id"] and retry["attempt"] == 2
    report(coordinator, again, retry, "fail", reason="bad scene", retryable=False)
    assert job(coordinator, job_id)["state"] == "running"
    # a worker of another join token agrees: the task (and job) fail with attempts left
    other = trusted.register(coordinator, "elsewhere",
                             join_token=trusted.new_join_token(coordinator))
    third = [t for t in lease(coordinator, other, slots=2) if t["task_id"] == task["task_id"]]
    report(coordinator, other, third[0], "fail", reason="bad scene", retryable=False)
    info = job(coordinator, job_id)
    assert info["state"] == "failed" and "a retry cannot help" in info["error"]
    assert info["retryable"] is False
    # the owner retries: what workers said before is forgotten, one voice is one again
    r = coordinator.client.post(f"{API}/jobs/{job_id}/retry", headers=coordinator.user())
    assert r.status_code == 200, r.text
    fresh = [t for t in lease(coordinator, other, slots=2) if t["task_id"] == task["task_id"]]
    report(coordinator, other, fresh[0], "fail", reason="bad scene", retryable=False)
    assert job(coordinator, job_id)["state"] == "running"


def test_non_retryable_reports_end_a_task_when_its_attempts_run_out(
        coordinator: Coordinator) -> None:
    """The genuine user error on a farm of one join token: it ends after max_attempts."""
    job_id = submit_sleep(coordinator, tasks=1, max_attempts=2)
    worker = coordinator.register_worker()
    for attempt in (1, 2):
        [task] = lease(coordinator, worker)
        assert task["attempt"] == attempt
        report(coordinator, worker, task, "fail", reason="no such module", retryable=False)
    info = job(coordinator, job_id)
    assert info["state"] == "failed" and "no such module" in info["error"]
    assert "a retry cannot help" in info["error"] and info["retryable"] is False


def test_release_does_not_count_a_failure(coordinator: Coordinator) -> None:
    submit_sleep(coordinator, max_attempts=1)
    worker = coordinator.register_worker()
    [task] = lease(coordinator, worker)
    assert report(coordinator, worker, task, "release").status_code == 200
    [again] = lease(coordinator, worker)
    assert again["attempt"] == 2


def test_cancel_tells_heartbeat_to_stop(coordinator: Coordinator) -> None:
    job_id = submit_sleep(coordinator, tasks=2)
    worker = coordinator.register_worker()
    [task] = lease(coordinator, worker)
    r = coordinator.client.post(f"{API}/jobs/{job_id}/cancel", headers=coordinator.user())
    assert r.json()["state"] == "cancelled"
    hb = report(coordinator, worker, task, "heartbeat").json()
    assert hb["action"] == "stop" and hb["reason"] == "job cancelled"
    assert lease(coordinator, worker) == []
    # retry puts both tasks back
    r = coordinator.client.post(f"{API}/jobs/{job_id}/retry", headers=coordinator.user())
    assert r.json()["state"] == "queued"
    assert len(lease(coordinator, worker, slots=4)) == 2


def test_worker_blocked_from_job_after_repeated_failures(coordinator: Coordinator) -> None:
    submit_sleep(coordinator, tasks=5, max_attempts=10)
    bad, good = coordinator.register_worker(), coordinator.register_worker()
    for _ in range(coordinator.services.settings.worker_block_failures):
        [task] = lease(coordinator, bad)
        report(coordinator, bad, task, "fail", reason="flaky machine")
    assert lease(coordinator, bad) == []
    assert len(lease(coordinator, good, slots=5)) == 5


def test_kinds_filter_claims(coordinator: Coordinator) -> None:
    submit_sleep(coordinator)
    only_sweep = coordinator.register_worker(kinds=["sweep"])
    assert lease(coordinator, only_sweep) == []


def test_dependencies_release_in_order(coordinator: Coordinator) -> None:
    """A DAG job built directly through the service: the dependent waits for both."""
    from parallel_pilot.coordinator.services import jobs as job_service
    from parallel_pilot.kinds.base import TaskSpec

    specs = [TaskSpec("a", {"milliseconds": 0}), TaskSpec("b", {"milliseconds": 0}),
             TaskSpec("join", {"milliseconds": 0}, depends_on=[0, 1])]
    svc = coordinator.services
    from parallel_pilot.kinds import sleep as sleep_kind

    original = sleep_kind.SleepKind.plan
    sleep_kind.SleepKind.plan = lambda self, params: specs  # type: ignore[method-assign]
    try:
        job_id = submit_sleep(coordinator)
    finally:
        sleep_kind.SleepKind.plan = original  # type: ignore[method-assign]
    worker = coordinator.register_worker()
    first = lease(coordinator, worker, slots=3)
    assert sorted(t["name"] for t in first) == ["a", "b"]
    report(coordinator, worker, first[0], "complete", result={})
    assert lease(coordinator, worker) == []
    report(coordinator, worker, first[1], "complete", result={})
    [last] = lease(coordinator, worker)
    assert last["name"] == "join"
    report(coordinator, worker, last, "complete", result={})
    assert job_service.get(svc, job_service.Caller(1, "admin", True), job_id).state == "completed"


def test_concurrent_claims_never_hand_out_a_task_twice(coordinator: Coordinator) -> None:
    submit_sleep(coordinator, tasks=60)
    workers = [coordinator.register_worker() for _ in range(6)]

    def drain(worker: dict[str, str]) -> list[int]:
        got: list[int] = []
        for _ in range(40):
            tasks = lease(coordinator, worker, slots=3)
            if not tasks:
                break
            got.extend(t["task_id"] for t in tasks)
        return got

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(drain, workers))
    all_ids = [i for r in results for i in r]
    assert len(all_ids) == 60 and len(set(all_ids)) == 60


def test_outputs_and_blob_round_trip(coordinator: Coordinator) -> None:
    job_id = submit_sleep(coordinator)
    worker = coordinator.register_worker()
    [task] = lease(coordinator, worker)
    data = b"frame bytes " * 1000
    sha = hashlib.sha256(data).hexdigest()
    assert coordinator.client.head(f"{API}/blobs/{sha}", headers=worker).status_code == 404
    # a worker's upload names the attempt it is an output of
    assert coordinator.client.put(f"{API}/blobs/{sha}", headers=worker,
                                  content=data).status_code == 400
    assert coordinator.client.put(
        f"{API}/blobs/{sha}", content=data,
        headers={**worker, "X-Pilot-Attempt": f"{task['task_id']}/{task['attempt']}"},
    ).status_code == 200
    r = report(coordinator, worker, task, "outputs", path="out/a.bin", sha256=sha, size=len(data))
    assert r.status_code == 200, r.text
    listed = coordinator.client.get(
        f"{API}/attempts/{task['task_id']}/{task['attempt']}/job-outputs",
        headers=worker, params={"prefix": "out/"})
    assert [o["path"] for o in listed.json()["outputs"]] == ["out/a.bin"]
    other = coordinator.register_worker()
    assert coordinator.client.get(
        f"{API}/attempts/{task['task_id']}/{task['attempt']}/job-outputs",
        headers=other).status_code == 409
    report(coordinator, worker, task, "complete", result={})
    outs = coordinator.client.get(f"{API}/jobs/{job_id}/outputs", headers=coordinator.user())
    assert outs.json()["outputs"] == [
        {"path": "out/a.bin", "sha256": sha, "size": len(data), "task_id": task["task_id"]}]
    got = coordinator.client.get(f"{API}/blobs/{sha}", headers=coordinator.user())
    assert got.content == data
    part = coordinator.client.get(f"{API}/blobs/{sha}",
                                  headers={**coordinator.user(), "Range": "bytes=6-11"})
    assert part.status_code == 206 and part.content == data[6:12]


def test_restart_gives_held_leases_a_grace_period(coordinator: Coordinator) -> None:
    submit_sleep(coordinator)
    worker = coordinator.register_worker()
    [task] = lease(coordinator, worker)
    # the coordinator was down longer than a lease: at start it renews held leases
    coordinator.clock.advance(coordinator.services.settings.lease_seconds * 3)
    assert leasing.grant_restart_grace(coordinator.services) == 1
    assert leasing.reap(coordinator.services) == 0
    assert report(coordinator, worker, task, "complete", result={}).status_code == 200


def test_lost_lease_message_is_clear(coordinator: Coordinator) -> None:
    submit_sleep(coordinator)
    worker = coordinator.register_worker()
    [task] = lease(coordinator, worker)
    coordinator.clock.advance(coordinator.services.settings.lease_seconds + 1)
    leasing.reap(coordinator.services)
    r = report(coordinator, worker, task, "complete", result={})
    assert r.status_code == 409 and "lost its lease" in r.json()["message"]


def test_requirements_keep_tasks_off_workers_that_lack_them(coordinator: Coordinator) -> None:
    r = coordinator.client.post(f"{API}/jobs", headers=coordinator.user(), json={
        "kind": "sleep", "params": {"tasks": 1}, "requirements": {"tags": ["big"]}})
    assert r.status_code == 201, r.text
    plain = coordinator.register_worker()
    assert lease(coordinator, plain) == []
    response = coordinator.client.post(f"{API}/workers/register", json={
        "join_token": coordinator.join_token, "name": "tagged",
        "capabilities": {"cpu_cores": 1, "ram_bytes": 1, "kinds": ["sleep"], "tags": ["big"]}})
    tagged = {"Authorization": f"Bearer {response.json()['worker_token']}"}
    assert len(lease(coordinator, tagged)) == 1
    bad = coordinator.client.post(f"{API}/jobs", headers=coordinator.user(), json={
        "kind": "sleep", "params": {}, "requirements": {"gpus": 2}})
    assert bad.status_code == 400 and "gpus" in bad.json()["message"]


def test_a_worker_that_left_gets_no_task_and_stays_offline(coordinator: Coordinator) -> None:
    # a long poll still open when the worker leaves claims again a moment later: it must
    # neither hand that worker a task nor bring it back to "idle"
    worker = coordinator.register_worker()
    assert coordinator.client.post(f"{API}/workers/leave", headers=worker).status_code == 200
    job_id = submit_sleep(coordinator)
    assert lease(coordinator, worker) == []
    (row,) = coordinator.client.get(f"{API}/workers", headers=coordinator.user()).json()[
        "workers"]
    assert row["state"] == "offline"
    assert job(coordinator, job_id)["state"] == "queued"
