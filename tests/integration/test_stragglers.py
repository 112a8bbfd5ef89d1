"""Backup copies of stragglers (issue 15) through the real API (the worker exchange) on
SQLite, PostgreSQL and MariaDB with a fake clock: when a job's remaining tasks all run and
a worker sits idle, a copy of the straggler goes to it; the first valid result wins, the
task completes once with the winner's result and outputs, and the other attempt is told
to stop; its late report is refused without counting a failure. No backup while the job
has a pending task, none to the worker running the original, one at a time, none twice
to one worker; a copy that fails or expires is dropped while the original goes on; an
original that is lost or fails hands the task to its copy; a cancel stops both."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from parallel_pilot import kinds
from parallel_pilot.coordinator.services import leasing
from parallel_pilot.kinds.base import TaskSpec
from parallel_pilot.kinds.sleep import SleepKind, SleepParams
from parallel_pilot.store.tables import task_copies
from tests.integration.conftest import Coordinator
from tests.integration.test_sync import (
    job,
    refs,
    register,
    submit,
    sync_,
    tasks_of,
    worker_rows,
)

API = "/api/v1"


def completed(lease: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**refs([lease])[0], "outcome": "completed", "result": {}, **extra}


def by_idx(coord: Coordinator, job_id: int) -> list[dict[str, Any]]:
    return sorted(tasks_of(coord, job_id), key=lambda t: t["id"])


def log_text(coord: Coordinator, job_id: int) -> str:
    r = coord.client.get(f"{API}/jobs/{job_id}/logs", headers=coord.user())
    return "\n".join(line["line"] for line in r.json()["lines"])


def copies(coord: Coordinator) -> list[tuple[int, int, str | None]]:
    """(task, attempt, outcome) of every copy made."""
    with coord.services.engine.connect() as conn:
        return [(r.task_id, r.attempt, r.outcome) for r in conn.execute(
            sa.select(task_copies).order_by(task_copies.c.task_id, task_copies.c.attempt))]


def upload(coord: Coordinator, who: dict[str, str], data: bytes,
           lease: dict[str, Any]) -> str:
    sha = hashlib.sha256(data).hexdigest()
    r = coord.client.put(f"{API}/blobs/{sha}", content=data, headers={
        **who, "X-Pilot-Attempt": f"{lease['task_id']}/{lease['attempt']}"})
    assert r.status_code == 200, r.text
    return sha


def the_tail(coord: Coordinator, tasks: int = 3, **extra: Any) -> tuple[
        int, dict[str, str], dict[str, str], dict[str, Any]]:
    """A job whose first task runs on a slow worker while a fast one did the rest (10 s
    each) and is idle: (job, slow, fast, the straggler's lease). The clock is then 20 s
    after the submit."""
    job_id = submit(coord, tasks=tasks, **extra)
    slow, fast = register(coord, "slow"), register(coord, "fast")
    [straggler] = sync_(coord, slow, free_slots=1)["tasks"]
    [lease] = sync_(coord, fast, free_slots=1)["tasks"]
    for _ in range(tasks - 1):
        coord.clock.advance(10)
        answer = sync_(coord, fast, reports=[completed(lease)], free_slots=1)
        assert answer["verdicts"][0]["accepted"]
        if answer["tasks"]:
            [lease] = answer["tasks"]
    return job_id, slow, fast, straggler


def test_a_backup_copy_finishes_a_stragglers_task_and_the_straggler_is_stopped(
        coordinator: Coordinator) -> None:
    coord = coordinator
    job_id, slow, fast, straggler = the_tail(coord)
    assert straggler["attempt"] == 1
    # the fast worker is idle, but the straggler ran only 20 s (backup_min_seconds 60)
    assert sync_(coord, fast, free_slots=1)["tasks"] == []
    coord.clock.advance(30)
    sync_(coord, slow, held=refs([straggler]))  # still alive: its lease is renewed
    coord.clock.advance(20)
    [backup] = sync_(coord, fast, free_slots=1)["tasks"]
    assert (backup["task_id"], backup["attempt"]) == (straggler["task_id"], 2)
    assert backup["payload"] == straggler["payload"] and backup["kind"] == "sleep"
    assert straggler["task_id"] in worker_rows(coord)["fast"]["current_tasks"]
    # both attempts upload and post an output at the same path; the copy finishes first
    first = upload(coord, slow, b"the straggler's output", straggler)
    r = coord.client.post(f"{API}/attempts/{straggler['task_id']}/1/outputs", headers=slow,
                          json={"path": "out/a.txt", "sha256": first, "size": 22})
    assert r.status_code == 200, r.text
    winner = upload(coord, fast, b"the copy's output", backup)
    coord.clock.advance(5)
    answer = sync_(coord, fast, reports=[completed(backup, result={"by": "fast"}, outputs=[
        {"path": "out/a.txt", "sha256": winner, "size": 17}], log_lines=["copy ran"])],
        free_slots=1)
    assert answer["verdicts"][0]["accepted"] is True and answer["tasks"] == []
    info = job(coord, job_id)
    assert info["state"] == "completed" and info["tasks_done"] == 3
    task = by_idx(coord, job_id)[0]
    assert (task["state"], task["attempt"], task["result"], task["failures"],
            task["losses"]) == ("done", 2, {"by": "fast"}, 0, 0)
    outputs = coord.client.get(f"{API}/jobs/{job_id}/outputs",
                               headers=coord.user()).json()["outputs"]
    assert [(o["path"], o["sha256"]) for o in outputs] == [("out/a.txt", winner)]
    # the straggler is told to stop at its next exchange; its late result is refused
    # as stale, which is no failure of anything
    answer = sync_(coord, slow, held=refs([straggler]))
    assert [(s["task_id"], s["attempt"]) for s in answer["stop"]] == [
        (straggler["task_id"], 1)]
    assert "done" in answer["stop"][0]["reason"]
    late = sync_(coord, slow, reports=[completed(straggler, result={"by": "slow"})])
    assert late["verdicts"][0]["accepted"] is False
    assert "not the current one" in late["verdicts"][0]["reason"]
    task = by_idx(coord, job_id)[0]
    assert (task["result"], task["failures"]) == ({"by": "fast"}, 0)
    assert job(coord, job_id)["tasks_done"] == 3
    rows = worker_rows(coord)
    assert (rows["slow"]["tasks_done"], rows["fast"]["tasks_done"]) == (0, 3)
    assert copies(coord) == [(straggler["task_id"], 2, "won")]
    text = log_text(coord, job_id)
    assert "backup copy: attempt 2 on worker fast; attempt 1 on worker slow has run 70 s" \
        in text
    assert "backup copy attempt 2 on worker fast finished first" in text
    assert text.count("copy ran") == 1
    # the slow worker was not blamed: it takes the next job's task
    submit(coord, tasks=1)
    assert len(sync_(coord, slow, free_slots=1)["tasks"]) == 1


def test_when_the_original_wins_the_copy_is_stopped(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id, slow, fast, straggler = the_tail(coord)
    coord.clock.advance(50)
    sync_(coord, slow, held=refs([straggler]))
    [backup] = sync_(coord, fast, free_slots=1)["tasks"]
    third = register(coord, "third")  # one copy at a time
    assert sync_(coord, third, free_slots=1)["tasks"] == []
    answer = sync_(coord, slow, reports=[completed(straggler, result={"by": "slow"})])
    assert answer["verdicts"][0]["accepted"] is True
    assert job(coord, job_id)["state"] == "completed"
    answer = sync_(coord, fast, held=refs([backup]), free_slots=0)
    assert [(s["task_id"], s["attempt"]) for s in answer["stop"]] == [
        (backup["task_id"], backup["attempt"])]
    late = sync_(coord, fast, reports=[completed(backup, result={"by": "fast"})])
    assert late["verdicts"][0]["accepted"] is False
    task = by_idx(coord, job_id)[0]
    assert (task["attempt"], task["result"], task["failures"]) == (1, {"by": "slow"}, 0)
    assert job(coord, job_id)["tasks_done"] == 3
    assert copies(coord) == [(straggler["task_id"], 2, "stopped")]


class TaggedSleep(SleepKind):
    """Sleep tasks of which the last needs a tag no worker here has: it stays pending."""

    name: ClassVar[str] = "tagged-sleep"

    def plan(self, params: BaseModel) -> list[TaskSpec]:
        assert isinstance(params, SleepParams)
        specs = super().plan(params)
        specs[-1] = TaskSpec(name=specs[-1].name, payload=specs[-1].payload,
                             requirements={"tags": ["nowhere"]})
        return specs


@pytest.fixture
def tagged_sleep() -> Iterator[None]:
    kinds.KINDS[TaggedSleep.name] = TaggedSleep()
    yield
    kinds.KINDS.pop(TaggedSleep.name, None)


@pytest.mark.usefixtures("tagged_sleep")
def test_no_backup_while_the_job_has_a_pending_task(coordinator: Coordinator) -> None:
    coord = coordinator
    r = coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": TaggedSleep.name, "params": {"tasks": 3, "milliseconds": 0}})
    job_id = r.json()["id"]
    slow = register(coord, "slow", kinds=[TaggedSleep.name])
    fast = register(coord, "fast", kinds=[TaggedSleep.name])
    [straggler] = sync_(coord, slow, free_slots=1)["tasks"]
    [lease] = sync_(coord, fast, free_slots=1)["tasks"]
    coord.clock.advance(10)
    sync_(coord, fast, reports=[completed(lease)])
    for _ in range(10):  # the straggler runs for ever, but a task of its job waits
        coord.clock.advance(50)
        sync_(coord, slow, held=refs([straggler]))
        assert sync_(coord, fast, free_slots=1)["tasks"] == []
    assert copies(coord) == []
    # the pending task is cancelled: the job's remaining task runs, and gets its copy
    pending = by_idx(coord, job_id)[-1]
    r = coord.client.post(f"{API}/jobs/{job_id}/tasks/cancel", headers=coord.user(),
                          json={"task_ids": [pending["id"]]})
    assert r.status_code == 200, r.text
    [backup] = sync_(coord, fast, free_slots=1)["tasks"]
    assert (backup["task_id"], backup["attempt"]) == (straggler["task_id"], 2)


def test_no_backup_to_the_same_worker_nor_twice_to_one(migrated_database_url: str,
                                                       tmp_path: Path) -> None:
    from tests.integration.conftest import make_coordinator
    coord = make_coordinator(migrated_database_url, tmp_path, lease_seconds=30.0)
    with coord.client:
        job_id = submit(coord, tasks=2)
        slow = register(coord, "slow", slots=2)
        straggler, other = sync_(coord, slow, free_slots=2)["tasks"]
        coord.clock.advance(10)
        sync_(coord, slow, held=refs([straggler]), reports=[completed(other)])
        coord.clock.advance(25)
        sync_(coord, slow, held=refs([straggler]))
        coord.clock.advance(25)
        # 60 s in, its own worker has a free slot: no copy of its own attempt
        assert sync_(coord, slow, held=refs([straggler]), free_slots=1)["tasks"] == []
        one, two = register(coord, "one"), register(coord, "two")
        [copy] = sync_(coord, one, free_slots=1)["tasks"]
        assert copy["attempt"] == 2
        # the copy's worker vanishes; the original lives on (its worker keeps syncing)
        coord.clock.advance(20)
        sync_(coord, slow, held=refs([straggler]))
        coord.clock.advance(15)
        leasing.reap(coord.services)
        assert copies(coord) == [(straggler["task_id"], 2, "expired")]
        assert by_idx(coord, job_id)[0]["state"] == "leased"
        # "one" had its copy: not again; "two" gets the next, under a new number
        assert sync_(coord, one, free_slots=1)["tasks"] == []
        [copy3] = sync_(coord, two, free_slots=1)["tasks"]
        assert copy3["attempt"] == 3
        # the original fails (it could be retried): its live copy carries the task on
        answer = sync_(coord, slow, reports=[{**refs([straggler])[0], "outcome": "failed",
                                              "reason": "out of memory"}])
        assert answer["verdicts"][0]["accepted"] is True
        task = by_idx(coord, job_id)[0]
        assert (task["state"], task["attempt"], task["failures"]) == ("leased", 3, 1)
        assert "out of memory" in task["error"]
        answer = sync_(coord, two, reports=[completed(copy3, result={"by": "two"})])
        assert answer["verdicts"][0]["accepted"] is True
        info = job(coord, job_id)
        assert info["state"] == "completed" and info["tasks_done"] == 2
        assert by_idx(coord, job_id)[0]["result"] == {"by": "two"}
        assert copies(coord) == [(straggler["task_id"], 2, "expired"),
                                 (straggler["task_id"], 3, "promoted")]
        assert "its backup copy, attempt 3 on worker two, carries on" in log_text(coord,
                                                                                   job_id)
    coord.services.engine.dispose()


def test_a_failed_copy_is_dropped_a_lost_original_hands_over(
        coordinator: Coordinator) -> None:
    coord = coordinator
    job_id, slow, fast, straggler = the_tail(coord, max_attempts=1)
    coord.clock.advance(50)
    sync_(coord, slow, held=refs([straggler]))
    [copy] = sync_(coord, fast, free_slots=1)["tasks"]
    # the copy fails: dropped; the task (one attempt only) goes on with the original
    answer = sync_(coord, fast, reports=[{**refs([copy])[0], "outcome": "failed",
                                          "reason": "disk full"}])
    assert answer["verdicts"][0]["accepted"] is True
    task = by_idx(coord, job_id)[0]
    assert (task["state"], task["attempt"], task["failures"]) == ("leased", 1, 0)
    assert job(coord, job_id)["state"] == "running"
    # another idle worker copies it; then the original's worker vanishes: the copy
    # carries on (a loss, no failure), and the next lease number is above both
    third = register(coord, "third")
    [copy3] = sync_(coord, third, free_slots=1)["tasks"]
    assert copy3["attempt"] == 3
    for _ in range(3):
        coord.clock.advance(25)
        sync_(coord, third, held=refs([copy3]))
    leasing.reap(coord.services)
    task = by_idx(coord, job_id)[0]
    assert (task["state"], task["attempt"], task["failures"], task["losses"]) == (
        "leased", 3, 0, 1)
    assert task["worker"] == "third"
    # the vanished worker comes back with its stale attempt: stopped, refused
    answer = sync_(coord, slow, held=refs([straggler]))
    assert [s["attempt"] for s in answer["stop"]] == [1]
    answer = sync_(coord, third, reports=[completed(copy3)])
    assert answer["verdicts"][0]["accepted"] is True
    assert job(coord, job_id)["state"] == "completed"
    assert [c[2] for c in copies(coord)] == ["failed", "promoted"]


def test_cancelling_the_job_stops_both(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id, slow, fast, straggler = the_tail(coord)
    coord.clock.advance(50)
    sync_(coord, slow, held=refs([straggler]))
    [copy] = sync_(coord, fast, free_slots=1)["tasks"]
    r = coord.client.post(f"{API}/jobs/{job_id}/cancel", headers=coord.user())
    assert r.status_code == 200, r.text
    for worker, lease in ((slow, straggler), (fast, copy)):
        answer = sync_(coord, worker, held=refs([lease]))
        assert [(s["task_id"], s["attempt"]) for s in answer["stop"]] == [
            (lease["task_id"], lease["attempt"])]
        assert "cancelled" in answer["stop"][0]["reason"]
        late = sync_(coord, worker, reports=[completed(lease)])
        assert late["verdicts"][0]["accepted"] is False
    assert job(coord, job_id)["state"] == "cancelled"
    assert copies(coord) == [(straggler["task_id"], 2, "stopped")]


def test_a_lease_after_a_dropped_copy_takes_a_new_number(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id, slow, fast, straggler = the_tail(coord)
    coord.clock.advance(50)
    sync_(coord, slow, held=refs([straggler]))
    [copy] = sync_(coord, fast, free_slots=1)["tasks"]
    assert copy["attempt"] == 2
    sync_(coord, fast, reports=[{**refs([copy])[0], "outcome": "released"}])
    # the original is handed back with no copy alive: requeued, and its next lease is
    # attempt 3, never the dropped copy's 2 again
    sync_(coord, slow, reports=[{**refs([straggler])[0], "outcome": "released"}])
    assert by_idx(coord, job_id)[0]["state"] == "ready"
    [again] = sync_(coord, fast, free_slots=1)["tasks"]
    assert (again["task_id"], again["attempt"]) == (straggler["task_id"], 3)
    # the dropped copy's stale report, while the worker holds the new attempt
    late = sync_(coord, fast, reports=[completed(copy)], held=refs([again]))
    assert late["verdicts"][0]["accepted"] is False
    assert sync_(coord, fast, reports=[completed(again)])["verdicts"][0]["accepted"]
    assert job(coord, job_id)["state"] == "completed"
    assert copies(coord) == [(straggler["task_id"], 2, "released")]
