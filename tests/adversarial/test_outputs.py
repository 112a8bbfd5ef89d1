"""A hostile worker and what it may report as outputs (issue 14).

Alice uploads a secret and runs a job on it; mallory's job is leased by a hostile worker
that learned the secret's hash. Reporting that hash as an output — while running, with
``complete``, or in a completed report of a sync — is refused, with the same answer as a
hash nobody has; the secret is then in no job's outputs and the worker cannot read it. An
upload for one attempt cannot be reported for another, an output bigger than its limit is
refused at upload, and the honest path (upload for the attempt, report) still works.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adversarial.conftest import Client, Coordinator, HostileWorker, running_coordinator

SECRET = b"alice's secret: the launch codes are 0000\n"
SMALL_OUTPUT_LIMIT = 1000  # PILOT_MAX_OUTPUT_BYTES of the ``small_outputs`` coordinator


def random_sha() -> str:
    return hashlib.sha256(secrets.token_bytes(32)).hexdigest()


def attempt_of(task: dict[str, Any]) -> str:
    return f"/attempts/{task['task_id']}/{task['attempt']}"


def upload_for(worker: HostileWorker, task: dict[str, Any], data: bytes) -> httpx.Response:
    """An upload naming the attempt ``task`` it is an output of."""
    sha = hashlib.sha256(data).hexdigest()
    return worker.request("PUT", f"/blobs/{sha}", content=data, headers={
        "Content-Type": "application/octet-stream",
        "X-Pilot-Attempt": f"{task['task_id']}/{task['attempt']}"})


def without(sha: str, response: httpx.Response) -> tuple[int, str]:
    """The status and body with the hash it names taken out (to compare two answers)."""
    return response.status_code, response.text.replace(sha, "<sha>")


def outputs_of(owner: Client, job_id: int) -> list[dict[str, Any]]:
    return owner.ok("GET", f"/jobs/{job_id}/outputs")["outputs"]


def the_scene(coordinator: Coordinator) -> tuple[Client, Client, int, int, str]:
    """alice (secret uploaded, a sweep job on it) and mallory (a sleep job of 2 tasks,
    submitted first); (alice, mallory, alice's job, mallory's job, secret hash)."""
    alice, mallory = coordinator.user("alice"), coordinator.user("mallory")
    secret = alice.upload(SECRET)
    mallory_job = mallory.submit("sleep", {"tasks": 2})["id"]
    alice_job = alice.submit("sweep", {"command": ["cat", "secret.txt"], "items": "1",
                                       "files": {"secret.txt": secret}})["id"]
    return alice, mallory, alice_job, mallory_job, secret


def untouched(coordinator: Coordinator, worker: HostileWorker, alice: Client,
              mallory: Client, alice_job: int, mallory_job: int, secret: str) -> None:
    """The secret is in nobody's outputs, and neither the worker nor mallory reads it:
    the same 404 as for a hash nobody has."""
    assert outputs_of(mallory, mallory_job) == [] and outputs_of(alice, alice_job) == []
    nobody = random_sha()
    for who in (worker, mallory):
        for method in ("GET", "HEAD"):
            got = who.request(method, f"/blobs/{secret}")
            assert got.status_code == 404, (method, got.status_code)
            assert without(secret, got) == without(nobody, who.request(method,
                                                                       f"/blobs/{nobody}"))
    assert alice.request("GET", f"/blobs/{secret}").content == SECRET


def test_an_output_report_cannot_steal_another_users_blob(coordinator: Coordinator) -> None:
    alice, mallory, alice_job, mallory_job, secret = the_scene(coordinator)
    worker = coordinator.worker("hostile", slots=2, kinds=["sleep"])
    tasks = worker.take(2)
    assert {t["job_id"] for t in tasks} == {mallory_job}
    first = tasks[0]
    nobody = random_sha()
    # while running: one answer for alice's blob and for a blob nobody has
    stolen = worker.request("POST", f"{attempt_of(first)}/outputs",
                            json={"path": "loot.txt", "sha256": secret, "size": len(SECRET)})
    made_up = worker.request("POST", f"{attempt_of(first)}/outputs",
                             json={"path": "loot.txt", "sha256": nobody, "size": len(SECRET)})
    assert stolen.status_code == 400 and stolen.json()["error"] == "output_not_uploaded"
    assert "not uploaded for attempt" in stolen.json()["message"]
    assert without(secret, stolen) == without(nobody, made_up)
    # with the result: refused whole, so the task is not completed either
    for sha in (secret, nobody):
        done = worker.request("POST", f"{attempt_of(first)}/complete", json={
            "result": {"ok": 1}, "outputs": [{"path": "loot.txt", "sha256": sha, "size": 1}]})
        assert done.status_code == 400 and done.json()["error"] == "output_not_uploaded"
    assert without(secret, worker.request("POST", f"{attempt_of(first)}/complete", json={
        "outputs": [{"path": "x", "sha256": secret, "size": 1}]})) == without(
        nobody, worker.request("POST", f"{attempt_of(first)}/complete", json={
            "outputs": [{"path": "x", "sha256": nobody, "size": 1}]}))
    tasks_now = mallory.ok("GET", f"/jobs/{mallory_job}/tasks")["tasks"]
    assert all(t["state"] == "leased" for t in tasks_now)
    untouched(coordinator, worker, alice, mallory, alice_job, mallory_job, secret)


def test_a_sync_report_naming_a_foreign_blob_is_refused_whole(
        coordinator: Coordinator) -> None:
    alice, mallory, alice_job, mallory_job, secret = the_scene(coordinator)
    worker = coordinator.worker("hostile", slots=2, kinds=["sleep"])
    first, second = worker.take(2)
    nobody = random_sha()

    def report(task: dict[str, Any], sha: str) -> dict[str, Any]:
        return {"task_id": task["task_id"], "attempt": task["attempt"],
                "outcome": "completed", "result": {"slept_ms": 0},
                "log_lines": ["pwned"],
                "outputs": [{"path": "loot.txt", "sha256": sha, "size": len(SECRET)}]}

    answer = worker.sync(reports=[report(first, secret), report(second, nobody)])
    stolen, made_up = answer["verdicts"]
    assert stolen["accepted"] is False and made_up["accepted"] is False

    def plain(reason: str, sha: str, task: dict[str, Any]) -> str:  # hash and task out
        return (reason.replace(sha, "<sha>").replace(f"task {task['task_id']}", "task <t>")
                .replace(f"{task['task_id']}/{task['attempt']}", "<t>/<a>"))

    assert plain(stolen["reason"], secret, first) == plain(made_up["reason"], nobody, second)
    assert "not uploaded for attempt" in stolen["reason"]
    # nothing of the reports applied: no result, no log line, no output; the tasks went
    # back to the queue for another worker
    tasks = mallory.ok("GET", f"/jobs/{mallory_job}/tasks")["tasks"]
    assert [t["state"] for t in tasks] == ["ready", "ready"]
    assert mallory.ok("GET", f"/jobs/{mallory_job}")["state"] != "completed"
    lines = [line["line"] for line in mallory.ok("GET", f"/jobs/{mallory_job}/logs")["lines"]]
    assert "pwned" not in lines
    assert any("did not upload" in line for line in lines)
    untouched(coordinator, worker, alice, mallory, alice_job, mallory_job, secret)


def test_an_upload_counts_only_for_the_attempt_it_named(coordinator: Coordinator) -> None:
    mallory = coordinator.user("mallory")
    job = mallory.submit("sleep", {"tasks": 2})["id"]
    worker = coordinator.worker("hostile", slots=2, kinds=["sleep"])
    one, two = worker.take(2)
    data = b"an output of task one"
    sha = hashlib.sha256(data).hexdigest()
    assert upload_for(worker, one, data).status_code == 200
    # reported for the other task it holds: refused
    other = worker.request("POST", f"{attempt_of(two)}/outputs",
                           json={"path": "out.txt", "sha256": sha, "size": len(data)})
    assert other.status_code == 400 and other.json()["error"] == "output_not_uploaded"
    # nor for the next attempt of the same task
    worker.ok("POST", f"{attempt_of(one)}/release")
    [again] = worker.take(1)
    assert again["task_id"] == one["task_id"] and again["attempt"] == one["attempt"] + 1
    later = worker.request("POST", f"{attempt_of(again)}/outputs",
                           json={"path": "out.txt", "sha256": sha, "size": len(data)})
    assert later.status_code == 400 and later.json()["error"] == "output_not_uploaded"
    assert outputs_of(mallory, job) == []


def test_an_upload_must_name_an_attempt_the_worker_holds(coordinator: Coordinator) -> None:
    alice, mallory, alice_job, mallory_job, secret = the_scene(coordinator)
    worker = coordinator.worker("hostile", kinds=["sleep"])
    honest = coordinator.worker("honest", kinds=["sweep"])
    [alices_task] = honest.take(1)
    assert alices_task["job_id"] == alice_job
    data = b"bytes for a task this worker does not hold"
    sha = hashlib.sha256(data).hexdigest()
    # no attempt named, someone else's attempt, a task that does not exist, nonsense
    plain = worker.request("PUT", f"/blobs/{sha}", content=data)
    assert plain.status_code == 400 and "X-Pilot-Attempt" in plain.json()["message"]
    theirs = upload_for(worker, alices_task, data)
    assert theirs.status_code == 409 and theirs.json()["error"] == "stale_attempt"
    missing = upload_for(worker, {"task_id": 10**9, "attempt": 1}, data)
    assert missing.status_code == 404
    for value in ("1", "a/b", "1/2/3", "-1/1", ""):
        bad = worker.request("PUT", f"/blobs/{sha}", content=data,
                             headers={"X-Pilot-Attempt": value})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_input", value
    # none of it was stored as the worker's: it cannot read the bytes back
    assert worker.request("GET", f"/blobs/{sha}").status_code == 404
    # the attempt it does hold: the upload is taken
    [own] = worker.take(1)
    assert own["job_id"] == mallory_job
    assert upload_for(worker, own, data).status_code == 200


def test_inputs_of_the_attempt_may_be_reported(coordinator: Coordinator) -> None:
    mallory = coordinator.user("mallory")
    script = mallory.upload(b"print('hello')\n")
    job = mallory.submit("sweep", {"command": ["python", "s.py"], "items": "1",
                                   "files": {"s.py": script}})["id"]
    worker = coordinator.worker("w", kinds=["sweep"])
    [task] = worker.take(1)
    assert task["inputs"] == {"s.py": script}
    worker.ok("POST", f"{attempt_of(task)}/outputs",
              json={"path": "items/1/s.py", "sha256": script, "size": 0})
    assert [(o["path"], o["sha256"], o["size"]) for o in outputs_of(mallory, job)] == [
        ("items/1/s.py", script, len(b"print('hello')\n"))]


def test_the_honest_path_still_works(coordinator: Coordinator) -> None:
    alice, mallory = coordinator.user("alice"), coordinator.user("mallory")
    job = mallory.submit("sleep", {"tasks": 3})["id"]
    worker = coordinator.worker("w", slots=3, kinds=["sleep"])
    running, completing, syncing = worker.take(3)
    files = {name: f"{name} of mallory's job\n".encode() for name in ("a", "b", "c")}
    for task, name in ((running, "a"), (completing, "b"), (syncing, "c")):
        assert upload_for(worker, task, files[name]).status_code == 200
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    # while running, with complete, and in a sync's completed report
    worker.ok("POST", f"{attempt_of(running)}/outputs",
              json={"path": "a.txt", "sha256": sha["a"], "size": 3})
    worker.ok("POST", f"{attempt_of(running)}/complete", json={"result": {}})
    worker.ok("POST", f"{attempt_of(completing)}/complete", json={
        "result": {}, "outputs": [{"path": "b.txt", "sha256": sha["b"], "size": 3}]})
    answer = worker.sync(reports=[{
        "task_id": syncing["task_id"], "attempt": syncing["attempt"], "outcome": "completed",
        "result": {}, "outputs": [{"path": "c.txt", "sha256": sha["c"], "size": 3}]}])
    assert [v["accepted"] for v in answer["verdicts"]] == [True]
    assert mallory.ok("GET", f"/jobs/{job}")["state"] == "completed"
    listed = {o["path"]: (o["sha256"], o["size"]) for o in outputs_of(mallory, job)}
    # the sizes are the uploaded bytes', not what the report said
    assert listed == {f"{n}.txt": (sha[n], len(files[n])) for n in files}
    for name, data in files.items():
        assert mallory.request("GET", f"/blobs/{sha[name]}").content == data
        assert alice.request("GET", f"/blobs/{sha[name]}").status_code == 404


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def small_outputs(request: pytest.FixtureRequest, tmp_path: Path,
                  fresh_database: Callable[..., str]) -> Iterator[Coordinator]:
    """The ``coordinator`` fixture's server with outputs limited to 1,000 bytes."""
    url = fresh_database(request.param, migrated=True)
    with running_coordinator(tmp_path / "data", request.param, url,
                             max_output_bytes=SMALL_OUTPUT_LIMIT) as coord:
        yield coord


def test_an_oversized_output_is_refused_at_upload(small_outputs: Coordinator) -> None:
    mallory = small_outputs.user("mallory")
    job = mallory.submit("sleep", {"tasks": 1})["id"]
    worker = small_outputs.worker("w", kinds=["sleep"])
    [task] = worker.take(1)
    big = b"x" * (SMALL_OUTPUT_LIMIT + 1)
    sha = hashlib.sha256(big).hexdigest()
    declared = upload_for(worker, task, big)
    assert declared.status_code == 413 and declared.json()["error"] == "payload_too_large"
    assert f"at most {SMALL_OUTPUT_LIMIT} bytes" in declared.json()["message"]
    assert "sleep task" in declared.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield big[:500]
        yield big[500:]

    streamed = worker.request("PUT", f"/blobs/{sha}", content=chunks(), headers={
        "X-Pilot-Attempt": f"{task['task_id']}/{task['attempt']}"})
    assert streamed.status_code == 413
    assert f"at most {SMALL_OUTPUT_LIMIT} bytes" in streamed.json()["message"]
    refused = worker.request("POST", f"{attempt_of(task)}/outputs",
                             json={"path": "big.bin", "sha256": sha, "size": len(big)})
    assert refused.status_code == 400 and refused.json()["error"] == "output_not_uploaded"
    # a user's own upload is not an output: the farm's upload limit applies to it
    assert mallory.upload(big) == sha
    refused = worker.request("POST", f"{attempt_of(task)}/outputs",
                             json={"path": "big.bin", "sha256": sha, "size": len(big)})
    assert refused.status_code == 400 and refused.json()["error"] == "output_not_uploaded"
    # within the limit: taken
    small = b"y" * SMALL_OUTPUT_LIMIT
    assert upload_for(worker, task, small).status_code == 200
    worker.ok("POST", f"{attempt_of(task)}/complete", json={"outputs": [
        {"path": "small.bin", "sha256": hashlib.sha256(small).hexdigest(), "size": 0}]})
    assert [o["path"] for o in outputs_of(mallory, job)] == ["small.bin"]
