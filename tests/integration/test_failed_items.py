"""Failed sweep items and final failures, through the real API on SQLite, PostgreSQL and
MariaDB: ``JobInfo.failed_items`` counted by one SQL aggregate that agrees with
``kinds.sweep.item_failure``, ``JobInfo.retryable`` false only when every failure was final;
and, without a database, how a sweep item that cannot start becomes a result."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.sweep import exec_failure, item_failure, start_problem
from parallel_pilot.store import queries as q
from tests.integration import trusted
from tests.integration.conftest import Coordinator
from tests.unit.test_sweep_kind import FakeContext, lease_for

API = "/api/v1"

# results as workers report them, and whether each is a failed item
RESULTS = [
    ({"item": "1", "exit_code": 0, "stdout": "ok\n", "timed_out": False}, None),
    ({"item": "2", "exit_code": 2, "stdout": "", "timed_out": False}, "exit 2"),
    ({"item": "3", "exit_code": 127, "error": "nosuchcmd: No such file or directory",
      "timed_out": False}, "could not start: nosuchcmd: No such file or directory"),
    ({"item": "4", "exit_code": -15, "timed_out": True}, "timed out"),
    ({"item": "5", "exit_code": 0, "timed_out": True}, "timed out"),  # exited as time ran out
    ({"item": "6", "exit_code": 0}, None),  # an older worker's result: no timed_out
    ({"item": "7", "exit_code": None, "stdout": ""}, None),  # stopped: no exit code
]


def submit(coord: Coordinator, kind: str, params: dict, **extra: object) -> int:
    r = coord.client.post(f"{API}/jobs", headers=coord.user(),
                          json={"kind": kind, "params": params, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def lease_all(coord: Coordinator, worker: dict[str, str]) -> list[dict]:
    r = coord.client.post(f"{API}/workers/lease", headers=worker,
                          json={"slots": 64, "wait_seconds": 0})
    assert r.status_code == 200, r.text
    return sorted(r.json()["tasks"], key=lambda t: t["task_id"])


def report(coord: Coordinator, worker: dict[str, str], task: dict, what: str, **body: object):
    r = coord.client.post(f"{API}/attempts/{task['task_id']}/{task['attempt']}/{what}",
                          headers=worker, json=body)
    assert r.status_code == 200, r.text


def job(coord: Coordinator, job_id: int) -> dict:
    r = coord.client.get(f"{API}/jobs/{job_id}", headers=coord.user())
    assert r.status_code == 200, r.text
    return r.json()


def test_failed_items_are_counted_as_results_arrive(coordinator: Coordinator) -> None:
    job_id = submit(coordinator, "sweep", {"command": ["sim"], "items": "1-7"})
    sleep_id = submit(coordinator, "sleep", {"tasks": 1})
    worker = coordinator.register_worker(kinds=["sweep"])
    tasks = lease_all(coordinator, worker)
    assert job(coordinator, job_id)["failed_items"] == 0  # a sweep: a number from the start

    report(coordinator, worker, tasks[1], "complete", result=RESULTS[1][0])
    running = job(coordinator, job_id)
    assert running["state"] == "running" and running["failed_items"] == 1

    for task, (result, _) in zip(tasks, RESULTS, strict=True):
        if task is not tasks[1]:
            report(coordinator, worker, task, "complete", result=result)
    done = job(coordinator, job_id)
    expected = sum(1 for _, how in RESULTS if how is not None)
    assert done["state"] == "completed" and done["failed_items"] == expected == 4
    assert done["retryable"] is True

    listed = {j["id"]: j for j in coordinator.client.get(
        f"{API}/jobs", headers=coordinator.user()).json()["jobs"]}
    assert listed[job_id]["failed_items"] == 4
    assert listed[sleep_id]["failed_items"] is None  # no items in a sleep job


def test_the_aggregate_agrees_with_item_failure(coordinator: Coordinator) -> None:
    """The SQL mirror and the Python definition of a failed item, result by result."""
    worker = coordinator.register_worker(kinds=["sweep"])
    jobs = []
    for result, how in RESULTS:
        job_id = submit(coordinator, "sweep", {"command": ["sim"], "items": [result["item"]]})
        [task] = lease_all(coordinator, worker)
        report(coordinator, worker, task, "complete", result=result)
        assert item_failure(result) == how
        jobs.append((job_id, how))
    with coordinator.services.transaction() as conn:
        counts = q.failed_item_counts(conn, [j for j, _ in jobs])
    assert counts == {j: 1 for j, how in jobs if how is not None}


def test_retryable_is_false_only_when_every_failure_was_final(
        coordinator: Coordinator) -> None:
    # trusted: its "a retry cannot help" is final at once (tests/integration/
    # test_lease_protocol.py has the untrusted rules)
    worker = trusted.register(coordinator, "vouched", kinds=["sleep"], trusted=True)

    final = submit(coordinator, "sleep", {"tasks": 2})
    first, _second = lease_all(coordinator, worker)
    report(coordinator, worker, first, "fail", reason="missing package", retryable=False)
    info = job(coordinator, final)
    assert info["state"] == "failed" and info["retryable"] is False
    assert info["failed_items"] is None

    used_up = submit(coordinator, "sleep", {"tasks": 1}, max_attempts=2)
    for _ in range(2):  # a retryable failure, until the attempts are used up
        [task] = lease_all(coordinator, worker)
        report(coordinator, worker, task, "fail", reason="flaky disk", retryable=True)
    info = job(coordinator, used_up)
    assert info["state"] == "failed" and info["retryable"] is True

    cancelled = submit(coordinator, "sleep", {"tasks": 1})
    r = coordinator.client.post(f"{API}/jobs/{cancelled}/cancel", headers=coordinator.user())
    assert r.json()["state"] == "cancelled" and r.json()["retryable"] is True

    listed = {j["id"]: j["retryable"] for j in coordinator.client.get(
        f"{API}/jobs", headers=coordinator.user()).json()["jobs"]}
    assert listed == {final: False, used_up: True, cancelled: True}

    # retrying anyway is allowed (the owner may have fixed the workers); it runs again
    r = coordinator.client.post(f"{API}/jobs/{final}/retry", headers=coordinator.user())
    assert r.status_code == 200 and r.json()["retryable"] is True


# ---------------------------------------------------------------- sweep kind, no database


def test_a_command_that_cannot_start_is_a_result_with_an_error(tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path, {"sim.py": b""})
    task = lease_for("9", [])
    task.payload["command"] = ["nosuchcmd", "{item}"]
    result = get_kind("sweep").run(task, ctx)
    assert result["error"] == "nosuchcmd: No such file or directory"
    assert result["exit_code"] == 127 and result["files"] == {}
    assert item_failure(result) == "could not start: nosuchcmd: No such file or directory"
    assert any("cannot run 'nosuchcmd'" in line for line in ctx.lines)


def test_start_problems_are_named_as_execvp_names_them(tmp_path: Path) -> None:
    (tmp_path / "script.sh").write_text("#!/bin/sh\n")
    (tmp_path / "folder").mkdir()
    assert start_problem(sys.executable, tmp_path, None) is None
    assert start_problem("sh", tmp_path, "/usr/bin:/bin") is None
    assert start_problem("nosuchcmd", tmp_path, "/usr/bin:/bin") == (
        127, "No such file or directory")
    assert start_problem("./missing.sh", tmp_path, None) == (127, "No such file or directory")
    assert start_problem("./script.sh", tmp_path, None) == (126, "Permission denied")
    assert start_problem("./folder", tmp_path, None) == (126, "Is a directory")


@pytest.mark.parametrize("stderr, expected", [
    ("bwrap: execvp hidden: No such file or directory\n",
     ("hidden", 127, "No such file or directory")),
    ("cannot run 'x.sh': Permission denied\n", ("x.sh", 126, "Permission denied")),
    ("Traceback...\nbwrap: execvp hidden: No such file or directory\n", None),
])
def test_an_exec_failure_after_the_check_is_recognised(stderr: str, expected: object) -> None:
    assert exec_failure(1, "", stderr) == expected
    assert exec_failure(0, "", stderr) is None  # it ran: whatever it printed
