"""Isolation through the real API on SQLite, PostgreSQL and MariaDB: a user sees only
their own jobs and blobs (another user's are "not found"), a worker reads only the blobs of
the tasks it holds and reports only on its own attempt; admins see everything."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from parallel_pilot.coordinator.tokens import USER_TOKEN_PREFIX, hash_token, new_token
from parallel_pilot.store import queries as q
from tests.integration.conftest import Coordinator

API = "/api/v1"


def add_user(coord: Coordinator, name: str, is_admin: bool = False) -> dict[str, str]:
    """A user made straight in the database (the accounts API is tested on its own)."""
    token = new_token(USER_TOKEN_PREFIX)
    with coord.services.transaction() as conn:
        user_id = q.insert_user(conn, name, is_admin, coord.clock())
        q.insert_api_token(conn, user_id, hash_token(token), "test", coord.clock())
    return coord.user(token)


def upload(coord: Coordinator, who: dict[str, str], data: bytes,
           for_task: dict | None = None) -> str:
    """Upload as a user, or as a worker an output of the attempt ``for_task``."""
    sha = hashlib.sha256(data).hexdigest()
    headers = dict(who)
    if for_task is not None:
        headers["X-Pilot-Attempt"] = f"{for_task['task_id']}/{for_task['attempt']}"
    r = coord.client.put(f"{API}/blobs/{sha}", headers=headers, content=data)
    assert r.status_code == 200, r.text
    return sha


def submit_sweep(coord: Coordinator, who: dict[str, str], script: bytes,
                 items: str = "1-2") -> tuple[int, str]:
    sha = upload(coord, who, script)
    r = coord.client.post(f"{API}/jobs", headers=who, json={
        "kind": "sweep", "params": {"command": ["python", "sim.py", "{item}"], "items": items,
                                    "files": {"sim.py": sha}}})
    assert r.status_code == 201, r.text
    return r.json()["id"], sha


def lease_one(coord: Coordinator, worker: dict[str, str]) -> dict:
    r = coord.client.post(f"{API}/workers/lease", headers=worker,
                          json={"slots": 1, "wait_seconds": 0})
    assert r.status_code == 200, r.text
    [task] = r.json()["tasks"]
    return task


def attempt(task: dict, what: str) -> str:
    return f"{API}/attempts/{task['task_id']}/{task['attempt']}/{what}"


def can_read(coord: Coordinator, who: dict[str, str], sha: str) -> bool:
    head = coord.client.head(f"{API}/blobs/{sha}", headers=who)
    get = coord.client.get(f"{API}/blobs/{sha}", headers=who)
    assert head.status_code == get.status_code, (head.status_code, get.status_code)
    assert get.status_code in (200, 404), get.text
    if get.status_code == 404:
        assert get.json() == {"error": "blob_not_found", "message": f"no blob {sha}"}
    return get.status_code == 200


@pytest.mark.parametrize("path", ["", "/tasks", "/outputs", "/logs"])
def test_another_users_job_is_not_found(coordinator: Coordinator, path: str) -> None:
    alice, bob = add_user(coordinator, "alice"), add_user(coordinator, "bob")
    job_id, _ = submit_sweep(coordinator, alice, b"print('alice')")
    r = coordinator.client.get(f"{API}/jobs/{job_id}{path}", headers=bob)
    assert r.status_code == 404
    assert r.json() == {"error": "job_not_found", "message": f"no job {job_id}"}
    assert coordinator.client.get(f"{API}/jobs/{job_id}{path}", headers=alice).status_code == 200
    admin = coordinator.user()
    assert coordinator.client.get(f"{API}/jobs/{job_id}{path}", headers=admin).status_code == 200


def test_another_users_job_cannot_be_cancelled_retried_or_listed(
        coordinator: Coordinator) -> None:
    alice, bob = add_user(coordinator, "alice"), add_user(coordinator, "bob")
    job_id, _ = submit_sweep(coordinator, alice, b"print('alice')")
    for action in ("cancel", "retry"):
        r = coordinator.client.post(f"{API}/jobs/{job_id}/{action}", headers=bob)
        assert r.status_code == 404 and r.json()["error"] == "job_not_found", action
    assert coordinator.client.get(f"{API}/jobs/{job_id}", headers=alice).json()["state"] == \
        "queued"
    assert coordinator.client.get(f"{API}/jobs", headers=bob).json()["jobs"] == []
    mine = coordinator.client.get(f"{API}/jobs", headers=alice).json()["jobs"]
    assert [j["id"] for j in mine] == [job_id]
    everyone = coordinator.client.get(f"{API}/jobs", headers=coordinator.user()).json()["jobs"]
    assert job_id in [j["id"] for j in everyone]


def test_users_read_only_their_own_blobs(coordinator: Coordinator) -> None:
    alice, bob = add_user(coordinator, "alice"), add_user(coordinator, "bob")
    sha = upload(coordinator, alice, b"alice's secret")
    assert can_read(coordinator, alice, sha)
    assert not can_read(coordinator, bob, sha)
    assert can_read(coordinator, coordinator.user(), sha)  # admin
    # a blob nobody has is the same "not found" as one that is not yours
    assert not can_read(coordinator, alice, hashlib.sha256(b"nothing").hexdigest())


def test_upload_needs_the_bytes_and_reveals_nothing(coordinator: Coordinator) -> None:
    alice, bob = add_user(coordinator, "alice"), add_user(coordinator, "bob")
    sha = upload(coordinator, alice, b"alice's secret")
    r = coordinator.client.put(f"{API}/blobs/{sha}", headers=bob, content=b"a guess")
    assert r.status_code == 422 and r.json()["error"] == "blob_mismatch"
    # the same bytes sent again are accepted (de-duplicated); holding them, bob may read them
    assert upload(coordinator, bob, b"alice's secret") == sha
    assert can_read(coordinator, alice, sha)


def test_inputs_and_outputs_of_own_jobs_are_readable(coordinator: Coordinator) -> None:
    alice, bob = add_user(coordinator, "alice"), add_user(coordinator, "bob")
    job_id, script = submit_sweep(coordinator, alice, b"print('alice')", items="1")
    worker = coordinator.register_worker(["sweep"])
    task = lease_one(coordinator, worker)
    out = upload(coordinator, worker, b"result of alice's job", for_task=task)
    r = coordinator.client.post(attempt(task, "outputs"), headers=worker,
                                json={"path": "items/1/out.txt", "sha256": out, "size": 21})
    assert r.status_code == 200, r.text
    assert can_read(coordinator, alice, out) and can_read(coordinator, alice, script)
    assert not can_read(coordinator, bob, out) and not can_read(coordinator, bob, script)


def test_workers_read_only_blobs_of_tasks_they_hold(coordinator: Coordinator) -> None:
    alice, bob = add_user(coordinator, "alice"), add_user(coordinator, "bob")
    _, alice_script = submit_sweep(coordinator, alice, b"print('alice')", items="1")
    w1 = coordinator.register_worker(["sweep"])
    w2 = coordinator.register_worker(["sweep"])
    task = lease_one(coordinator, w1)
    assert task["inputs"] == {"sim.py": alice_script}
    assert can_read(coordinator, w1, alice_script)
    assert not can_read(coordinator, w2, alice_script)
    bob_blob = upload(coordinator, bob, b"bob's data")
    assert not can_read(coordinator, w1, bob_blob) and not can_read(coordinator, w2, bob_blob)
    # once the task is finished, the worker holds nothing and reads nothing
    r = coordinator.client.post(attempt(task, "complete"), headers=w1, json={"result": {}})
    assert r.status_code == 200, r.text
    assert not can_read(coordinator, w1, alice_script)


def test_workers_read_outputs_of_their_held_tasks_job_only(coordinator: Coordinator) -> None:
    alice, bob = add_user(coordinator, "alice"), add_user(coordinator, "bob")
    alice_job, _ = submit_sweep(coordinator, alice, b"print('alice')", items="1-2")
    w1 = coordinator.register_worker(["sweep"])
    w2 = coordinator.register_worker(["sweep"])
    w3 = coordinator.register_worker(["sweep"])
    first, second = lease_one(coordinator, w1), lease_one(coordinator, w2)
    assert first["job_id"] == second["job_id"] == alice_job
    frame = upload(coordinator, w1, b"frame 1", for_task=first)
    r = coordinator.client.post(attempt(first, "outputs"), headers=w1,
                                json={"path": "frames/1.png", "sha256": frame, "size": 7})
    assert r.status_code == 200, r.text
    # w2 holds a task of the same job (as an assembly step would): it may read the frame
    assert can_read(coordinator, w2, frame)
    # w3 holds a task of bob's job only
    submit_sweep(coordinator, bob, b"print('bob')", items="1")
    bob_task = lease_one(coordinator, w3)
    assert bob_task["job_id"] != alice_job
    assert not can_read(coordinator, w3, frame)


def test_worker_reports_only_on_its_own_attempt(coordinator: Coordinator) -> None:
    alice = add_user(coordinator, "alice")
    submit_sweep(coordinator, alice, b"print('alice')", items="1")
    w1, w2 = coordinator.register_worker(["sweep"]), coordinator.register_worker(["sweep"])
    task = lease_one(coordinator, w1)
    for what, body in (("heartbeat", {}), ("complete", {"result": {}}),
                       ("fail", {"reason": "sabotage"}), ("release", None)):
        r = coordinator.client.post(attempt(task, what), headers=w2, json=body)
        assert r.status_code == 409 and r.json()["error"] == "stale_attempt", (what, r.text)
        r = coordinator.client.post(attempt(task, what), headers=alice, json=body)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (what, r.text)
    r = coordinator.client.post(attempt(task, "heartbeat"), headers=w1, json={})
    assert r.json()["action"] == "continue"


def test_workers_cannot_use_user_endpoints(coordinator: Coordinator) -> None:
    alice = add_user(coordinator, "alice")
    job_id, _ = submit_sweep(coordinator, alice, b"print('alice')", items="1")
    worker = coordinator.register_worker(["sweep"])
    for path in (f"{API}/jobs", f"{API}/jobs/{job_id}", f"{API}/jobs/{job_id}/logs"):
        r = coordinator.client.get(path, headers=worker)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", path


def sweep_naming(coord: Coordinator, who: dict[str, str], sha: str) -> httpx.Response:
    return coord.client.post(f"{API}/jobs", headers=who, json={
        "kind": "sweep", "params": {"command": ["python", "sim.py", "{item}"], "items": "1",
                                    "files": {"sim.py": sha}}})


def test_a_blob_name_is_not_a_capability_at_submit(coordinator: Coordinator) -> None:
    alice, bob = add_user(coordinator, "alice"), add_user(coordinator, "bob")
    sha = upload(coordinator, alice, b"print('alice secret')")
    r = sweep_naming(coordinator, bob, sha)
    # the same answer as for a blob nobody uploaded: existence is not confirmed
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "missing_blob"
    nothing = sweep_naming(coordinator, bob, hashlib.sha256(b"never uploaded").hexdigest())
    assert r.json()["message"] == nothing.json()["message"]
    everyone = coordinator.client.get(f"{API}/jobs", headers=coordinator.user()).json()["jobs"]
    assert everyone == []
    assert not can_read(coordinator, bob, sha)
    # alice and an admin may still use it
    assert sweep_naming(coordinator, alice, sha).status_code == 201
    r = sweep_naming(coordinator, coordinator.user(), sha)
    assert r.status_code == 201
    assert not can_read(coordinator, bob, sha)


def test_uploading_the_same_bytes_grants_reading_them(coordinator: Coordinator) -> None:
    alice, bob = add_user(coordinator, "alice"), add_user(coordinator, "bob")
    data = b"print('shared script')"
    sha = upload(coordinator, alice, data)
    assert not can_read(coordinator, bob, sha)
    assert upload(coordinator, bob, data) == sha  # de-duplicated, and now bob's too
    assert can_read(coordinator, bob, sha) and can_read(coordinator, alice, sha)
    assert sweep_naming(coordinator, bob, sha).status_code == 201
    assert sweep_naming(coordinator, alice, sha).status_code == 201
    carol = add_user(coordinator, "carol")
    assert not can_read(coordinator, carol, sha)
    assert sweep_naming(coordinator, carol, sha).status_code == 400
