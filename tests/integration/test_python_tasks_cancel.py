"""Per-task cancel (what a cancelled ``Executor`` future does) and ``python`` job validation
through the real API, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import hashlib

from tests.integration.conftest import Coordinator
from tests.integration.test_lease_protocol import API, job, lease, report, submit_sleep


def cancel_tasks(coord: Coordinator, job_id: int, task_ids: list[int]):
    return coord.client.post(f"{API}/jobs/{job_id}/tasks/cancel", headers=coord.user(),
                             json={"task_ids": task_ids})


def task_states(coord: Coordinator, job_id: int) -> dict[int, str]:
    r = coord.client.get(f"{API}/jobs/{job_id}/tasks", headers=coord.user())
    return {t["id"]: t["state"] for t in r.json()["tasks"]}


def test_cancelled_tasks_stop_and_the_rest_completes_the_job(coordinator: Coordinator) -> None:
    job_id = submit_sleep(coordinator, tasks=4)
    ids = sorted(task_states(coordinator, job_id))
    worker = coordinator.register_worker()
    held = lease(coordinator, worker, slots=1)[0]
    other = [i for i in ids if i != held["task_id"]]

    # cancel the running task and one queued task; the others go on
    r = cancel_tasks(coordinator, job_id, [held["task_id"], other[0]])
    assert r.status_code == 200, r.text
    assert sorted(r.json()["cancelled"]) == sorted([held["task_id"], other[0]])
    assert r.json()["job"]["state"] == "running"
    hb = report(coordinator, worker, held, "heartbeat")
    assert hb.json()["action"] == "stop"
    states = task_states(coordinator, job_id)
    assert states[held["task_id"]] == "cancelled" and states[other[0]] == "cancelled"

    rest = lease(coordinator, worker, slots=5)
    assert sorted(t["task_id"] for t in rest) == sorted(other[1:])
    for task in rest:
        assert report(coordinator, worker, task, "complete", result={}).status_code == 200
    info = job(coordinator, job_id)
    assert info["state"] == "completed"
    assert info["task_counts"] == {"done": 2, "cancelled": 2}

    # a second cancel of finished tasks changes nothing
    again = cancel_tasks(coordinator, job_id, ids)
    assert again.status_code == 200 and again.json()["cancelled"] == []


def test_cancelling_every_task_cancels_the_job(coordinator: Coordinator) -> None:
    job_id = submit_sleep(coordinator, tasks=3)
    ids = sorted(task_states(coordinator, job_id))
    r = cancel_tasks(coordinator, job_id, ids)
    assert r.status_code == 200
    assert r.json()["job"]["state"] == "cancelled"


def test_cancel_after_the_others_finished_completes_the_job(sqlite_coordinator) -> None:
    coord = sqlite_coordinator
    job_id = submit_sleep(coord, tasks=2)
    worker = coord.register_worker()
    first = lease(coord, worker, slots=1)[0]
    assert report(coord, worker, first, "complete", result={}).status_code == 200
    second = [i for i in task_states(coord, job_id) if i != first["task_id"]]
    assert cancel_tasks(coord, job_id, second).json()["job"]["state"] == "completed"


def test_bad_per_task_cancel_requests_are_refused(sqlite_coordinator) -> None:
    coord = sqlite_coordinator
    job_id = submit_sleep(coord, tasks=2)
    other_job = submit_sleep(coord, tasks=1)
    foreign = next(iter(task_states(coord, other_job)))
    r = cancel_tasks(coord, job_id, [foreign])
    assert r.status_code == 404 and str(foreign) in r.json()["message"]
    assert cancel_tasks(coord, job_id, []).status_code == 422
    assert cancel_tasks(coord, 999_999, [1]).status_code == 404
    assert set(task_states(coord, job_id).values()) == {"ready"}


def upload(coord: Coordinator, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    r = coord.client.put(f"{API}/blobs/{sha}", headers=coord.user(), content=data)
    assert r.status_code in (200, 201), r.text
    return sha


def python_params(function: str, calls: str, **extra: object) -> dict:
    return {"functions": [function], "calls": calls, "python": "3.11",
            "chunks": [{"function": 0, "offset": 0, "length": 4, "count": 2},
                       {"function": 0, "offset": 4, "length": 4, "count": 1}], **extra}


def test_python_job_plans_one_task_per_chunk(sqlite_coordinator) -> None:
    coord = sqlite_coordinator
    function, calls = upload(coord, b"function"), upload(coord, b"callscal")
    r = coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": "python", "params": python_params(function, calls, packages=["numpy"])})
    assert r.status_code == 201, r.text
    worker = coord.register_worker(kinds=["python"])
    tasks = lease(coord, worker, slots=5)
    assert [t["payload"]["count"] for t in tasks] == [2, 1]
    assert tasks[1]["payload"]["offset"] == 4 and tasks[0]["payload"]["packages"] == ["numpy"]
    assert tasks[0]["inputs"] == {"function": function, "calls": calls}
    # a worker that does not allow python gets none of it
    assert lease(coord, coord.register_worker(kinds=["sleep"])) == []


def test_bad_python_jobs_are_refused_with_the_reason(sqlite_coordinator) -> None:
    coord = sqlite_coordinator
    function = upload(coord, b"function")
    missing = hashlib.sha256(b"never uploaded").hexdigest()
    cases = [
        (python_params(function, missing), "not been uploaded"),
        (python_params(function, function, packages=["not a module"]), "module name"),
        (python_params(function, function, python="three"), "python"),
        ({**python_params(function, function),
          "chunks": [{"function": 3, "offset": 0, "length": 1, "count": 1}]}, "function 3"),
    ]
    for params, expected in cases:
        r = coord.client.post(f"{API}/jobs", headers=coord.user(),
                              json={"kind": "python", "params": params})
        assert r.status_code == 400, r.text
        assert expected in r.json()["message"], r.json()["message"]
