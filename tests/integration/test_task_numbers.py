"""One task numbering for users, through the real API on SQLite, PostgreSQL and MariaDB:
task N is the task at index N-1 of its job (as the dashboard shows it); a job's logs
filter by that number, and a number or id the job does not have is an error, not an
empty log. Also the names that carry numbers: python calls from 1, ``task_label``."""

from __future__ import annotations

from parallel_pilot.coordinator.services.jobs import task_label
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import parse_params
from parallel_pilot.kinds.python.kind import calls_name
from tests.integration.conftest import Coordinator

API = "/api/v1"
SHA = "a" * 64


def sweep_with_logs(coord: Coordinator, items: list[str]) -> tuple[int, list[dict]]:
    """A sweep whose every task logged ``line of <item>`` and completed; its tasks."""
    r = coord.client.post(f"{API}/jobs", headers=coord.user(),
                          json={"kind": "sweep", "params": {"command": ["echo", "{item}"],
                                                            "items": items}})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    worker = coord.register_worker(kinds=["sweep"])
    leased = coord.client.post(f"{API}/workers/lease", headers=worker,
                               json={"slots": 64, "wait_seconds": 0}).json()["tasks"]
    for task in reversed(leased):  # log out of plan order: ids and numbers must not mix up
        base = f"{API}/attempts/{task['task_id']}/{task['attempt']}"
        item = task["payload"]["item"]
        assert coord.client.post(f"{base}/heartbeat", headers=worker,
                                 json={"log_lines": [f"line of {item}"]}).status_code == 200
        assert coord.client.post(f"{base}/complete", headers=worker,
                                 json={"result": {"item": item, "exit_code": 0}}
                                 ).status_code == 200
    tasks = coord.client.get(f"{API}/jobs/{job_id}/tasks", headers=coord.user()).json()["tasks"]
    return job_id, tasks


def logs(coord: Coordinator, job_id: int, **params: object):
    return coord.client.get(f"{API}/jobs/{job_id}/logs", headers=coord.user(), params=params)


def test_logs_of_task_n_are_those_of_the_task_at_index_n_minus_1(
        coordinator: Coordinator) -> None:
    # a first job, so that the second one's task ids are not its task numbers
    sweep_with_logs(coordinator, ["x", "y"])
    job_id, tasks = sweep_with_logs(coordinator, ["a", "b", "c"])
    assert [t["index"] for t in tasks] == [0, 1, 2]
    assert tasks[0]["id"] != 1
    for number, item in enumerate(["a", "b", "c"], start=1):
        r = logs(coordinator, job_id, task=number)
        assert r.status_code == 200, r.text
        assert [line["line"] for line in r.json()["lines"]] == [f"line of {item}"]
        assert {line["task_id"] for line in r.json()["lines"]} == {tasks[number - 1]["id"]}
    by_id = logs(coordinator, job_id, task_id=tasks[1]["id"])
    assert [line["line"] for line in by_id.json()["lines"]] == ["line of b"]


def test_a_task_the_job_does_not_have_is_an_error(coordinator: Coordinator) -> None:
    other_job, other_tasks = sweep_with_logs(coordinator, ["x"])
    job_id, tasks = sweep_with_logs(coordinator, ["a", "b", "c"])

    missing = logs(coordinator, job_id, task=4)
    assert missing.status_code == 404
    assert missing.json() == {"error": "task_not_found", "message":
                              f"job {job_id} has no task 4: its tasks are numbered 1 to 3"}
    one = logs(coordinator, other_job, task=2)
    assert one.status_code == 404 and one.json()["message"].endswith("it has only task 1")
    huge = logs(coordinator, job_id, task=2**63 - 1)
    assert huge.status_code == 404
    for bad in (0, -1, 2**63, "two"):
        assert logs(coordinator, job_id, task=bad).status_code == 422

    foreign = logs(coordinator, job_id, task_id=other_tasks[0]["id"])
    assert foreign.status_code == 404
    assert foreign.json()["message"] == (f"job {job_id} has no task with id "
                                         f"{other_tasks[0]['id']}")
    both = logs(coordinator, job_id, task=1, task_id=tasks[0]["id"])
    assert both.status_code == 400 and "not both" in both.json()["message"]


def test_python_calls_are_numbered_from_one() -> None:
    assert calls_name(1, 1, 100) == "call 1 of 100"
    assert calls_name(6, 5, 100) == "calls 6-10 of 100"
    kind = get_kind("python")
    params = parse_params(kind, {
        "functions": [SHA], "calls": SHA, "python": "3.11", "chunks": [
            {"function": 0, "offset": 0, "length": 1, "count": 1},
            {"function": 0, "offset": 1, "length": 1, "count": 3},
            {"function": 0, "offset": 2, "length": 1, "count": 1}]})
    assert [spec.name for spec in kind.plan(params)] == [
        "call 1 of 5", "calls 2-4 of 5", "call 5 of 5"]
    assert task_label(0, "call 1 of 5") == "task 1 (call 1 of 5)"
