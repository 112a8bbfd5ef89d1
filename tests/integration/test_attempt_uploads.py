"""Upload grants per attempt through the real API on SQLite, PostgreSQL and MariaDB: a
worker's upload names the attempt it holds; only what it uploaded for that attempt (or the
attempt's inputs) may be reported as an output, by every report path; a refused report
changes nothing; a worker reads back what it uploaded and nothing it merely named."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from parallel_pilot.coordinator.services import leasing
from parallel_pilot.store.tables import attempt_uploads, task_outputs
from tests.integration.conftest import Coordinator

API = "/api/v1"


def lease(coord: Coordinator, worker: dict[str, str], slots: int = 1) -> list[dict]:
    r = coord.client.post(f"{API}/workers/lease", headers=worker,
                          json={"slots": slots, "wait_seconds": 0})
    assert r.status_code == 200, r.text
    return sorted(r.json()["tasks"], key=lambda t: t["task_id"])


def upload(coord: Coordinator, who: dict[str, str], data: bytes,
           task: dict | None = None) -> tuple[int, str]:
    sha = hashlib.sha256(data).hexdigest()
    headers = dict(who)
    if task is not None:
        headers["X-Pilot-Attempt"] = f"{task['task_id']}/{task['attempt']}"
    return coord.client.put(f"{API}/blobs/{sha}", headers=headers, content=data).status_code, sha


def at(task: dict, what: str) -> str:
    return f"{API}/attempts/{task['task_id']}/{task['attempt']}/{what}"


def stored_outputs(coord: Coordinator) -> list[tuple[int, str]]:
    with coord.services.engine.connect() as conn:
        return [(r.task_id, r.sha256) for r in conn.execute(
            sa.select(task_outputs.c.task_id, task_outputs.c.sha256)
            .order_by(task_outputs.c.id))]


def test_outputs_are_taken_only_from_the_attempts_uploads(coordinator: Coordinator) -> None:
    admin = coordinator.user()
    r = coordinator.client.post(f"{API}/jobs", headers=admin,
                                json={"kind": "sleep", "params": {"tasks": 2}})
    job_id = r.json()["id"]
    worker = coordinator.register_worker(["sleep"])
    one, two = lease(coordinator, worker, slots=2)
    status, mine = upload(coordinator, worker, b"one's output", one)
    assert status == 200
    status, users = upload(coordinator, admin, b"a user's blob")
    assert status == 200
    with coordinator.services.engine.connect() as conn:
        grants = [(g.task_id, g.attempt, g.sha256, g.size) for g in
                  conn.execute(sa.select(attempt_uploads))]
    assert grants == [(one["task_id"], 1, mine, 12)]
    # per-attempt: the user's blob, and one's upload for two, are refused alike
    for task, sha in ((one, users), (two, mine), (two, "0" * 64)):
        r = coordinator.client.post(at(task, "outputs"), headers=worker,
                                    json={"path": "x", "sha256": sha, "size": 1})
        assert r.status_code == 400 and r.json()["error"] == "output_not_uploaded", r.text
    # complete: refused whole (one good output, one not): the task is still leased
    r = coordinator.client.post(at(one, "complete"), headers=worker, json={
        "result": {}, "outputs": [{"path": "a", "sha256": mine, "size": 1},
                                  {"path": "b", "sha256": users, "size": 1}]})
    assert r.status_code == 400 and r.json()["error"] == "output_not_uploaded"
    assert stored_outputs(coordinator) == []
    # a sync: two's report names the user's blob (refused, handed back), one's is honest
    r = coordinator.client.post(f"{API}/workers/sync", headers=worker, json={"reports": [
        {"task_id": one["task_id"], "attempt": 1, "outcome": "completed", "result": {},
         "outputs": [{"path": "a", "sha256": mine, "size": 1}]},
        {"task_id": two["task_id"], "attempt": 1, "outcome": "completed", "result": {},
         "outputs": [{"path": "b", "sha256": users, "size": 1}]}]})
    assert r.status_code == 200, r.text
    assert [v["accepted"] for v in r.json()["verdicts"]] == [True, False]
    assert stored_outputs(coordinator) == [(one["task_id"], mine)]
    tasks = coordinator.client.get(f"{API}/jobs/{job_id}/tasks", headers=admin).json()["tasks"]
    assert [t["state"] for t in tasks] == ["done", "ready"]
    # the worker reads back what it uploaded, not what it only named
    assert coordinator.client.get(f"{API}/blobs/{mine}", headers=worker).status_code == 200
    assert coordinator.client.get(f"{API}/blobs/{users}", headers=worker).status_code == 404


def test_a_lost_lease_ends_the_grant(coordinator: Coordinator) -> None:
    coordinator.client.post(f"{API}/jobs", headers=coordinator.user(),
                            json={"kind": "sleep", "params": {"tasks": 1}})
    w1, w2 = coordinator.register_worker(["sleep"]), coordinator.register_worker(["sleep"])
    [first] = lease(coordinator, w1)
    coordinator.clock.advance(coordinator.services.settings.lease_seconds + 1)
    assert leasing.reap(coordinator.services) == 1
    [second] = lease(coordinator, w2)
    # the first worker's upload for its lost attempt is refused before a byte is stored
    status, sha = upload(coordinator, w1, b"late frame", first)
    assert status == 409
    assert coordinator.client.get(f"{API}/blobs/{sha}", headers=w1).status_code == 404
    status, _ = upload(coordinator, w2, b"late frame", second)
    assert status == 200
