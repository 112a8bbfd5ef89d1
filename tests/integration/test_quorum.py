"""Quorum dependencies through the real API (SQLite, PostgreSQL, MariaDB) with a fake clock:
a join task waits for all its parts, or for a quorum of them once its deadline passed; the
parts left out are cancelled, do not hold up the job and are not reopened by a retry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from parallel_pilot import kinds
from parallel_pilot.coordinator.services import leasing
from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.kinds.base import FinishedTask, RunContext, TaskSpec
from tests.integration import trusted as trusted_workers
from tests.integration.conftest import Coordinator
from tests.integration.test_lease_protocol import API, job, lease, report

PARTS = 3
QUORUM = 2
DEADLINE = 30.0


class QuorumParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = 1


class QuorumKind:
    """Rounds of PARTS parts and one join that needs QUORUM of them (like training)."""

    name: ClassVar[str] = "quorumtest"
    params_model: ClassVar[type[BaseModel]] = QuorumParams
    in_process: ClassVar[bool] = True

    def input_blobs(self, params: BaseModel) -> dict[str, str]:
        return {}

    def check_inputs(self, params: BaseModel,
                     read_prefix: Callable[[str, int], bytes]) -> BaseModel:
        return params

    def plan(self, params: BaseModel) -> list[TaskSpec]:
        assert isinstance(params, QuorumParams)
        specs: list[TaskSpec] = []
        join: int | None = None
        for r in range(params.rounds):
            first = len(specs)
            specs += [TaskSpec(name=f"r{r} part {i}", payload={"part": i},
                               depends_on=[] if join is None else [join],
                               affinity=f"part-{i}") for i in range(PARTS)]
            specs.append(TaskSpec(name=f"r{r} join", payload={"join": r},
                                  depends_on=list(range(first, first + PARTS)),
                                  quorum=QUORUM, deadline_seconds=DEADLINE))
            join = len(specs) - 1
        return specs

    def run(self, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
        return {}

    def finalize(self, params: BaseModel, tasks: list[FinishedTask]) -> dict[str, bytes]:
        return {"joined.txt": ",".join(t.name for t in tasks).encode()}


@pytest.fixture(autouse=True)
def quorum_kind() -> Iterator[None]:
    kinds.KINDS[QuorumKind.name] = QuorumKind()
    yield
    kinds.KINDS.pop(QuorumKind.name, None)


def submit(coord: Coordinator, rounds: int = 1, max_attempts: int | None = None) -> int:
    body: dict[str, Any] = {"kind": QuorumKind.name, "params": {"rounds": rounds}}
    if max_attempts:
        body["max_attempts"] = max_attempts
    r = coord.client.post(f"{API}/jobs", headers=coord.user(), json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def states(coord: Coordinator, job_id: int) -> dict[str, str]:
    r = coord.client.get(f"{API}/jobs/{job_id}/tasks", headers=coord.user())
    return {t["name"]: t["state"] for t in r.json()["tasks"]}


def workers(coord: Coordinator, n: int, trusted: bool = False) -> list[dict[str, str]]:
    """``trusted``: an admin vouched for them, so their "a retry cannot help" is final."""
    if trusted:
        return [trusted_workers.register(coord, f"vouched-{i}", kinds=[QuorumKind.name],
                                         trusted=True) for i in range(n)]
    return [coord.register_worker(kinds=[QuorumKind.name]) for _ in range(n)]


def test_join_waits_for_all_parts_before_the_deadline(coordinator: Coordinator) -> None:
    job_id = submit(coordinator)
    ws = workers(coordinator, PARTS)
    parts = [lease(coordinator, w)[0] for w in ws]
    for w, t in zip(ws[:2], parts[:2], strict=True):
        assert report(coordinator, w, t, "complete", result={}).status_code == 200
    # a quorum is done, but the deadline has not passed: the join waits for the third
    coordinator.clock.advance(DEADLINE - 1)
    leasing.reap(coordinator.services)
    assert states(coordinator, job_id)["r0 join"] == "blocked"
    assert report(coordinator, ws[2], parts[2], "complete", result={}).status_code == 200
    [joined] = lease(coordinator, ws[0])
    assert joined["name"] == "r0 join"
    assert report(coordinator, ws[0], joined, "complete", result={}).status_code == 200
    assert job(coordinator, job_id)["state"] == "completed"


def test_deadline_lets_the_quorum_go_ahead(coordinator: Coordinator) -> None:
    job_id = submit(coordinator)
    ws = workers(coordinator, PARTS)
    parts = [lease(coordinator, w)[0] for w in ws]
    for w, t in zip(ws[:2], parts[:2], strict=True):
        report(coordinator, w, t, "complete", result={})
    # the third worker keeps heartbeating but is too slow
    coordinator.clock.advance(DEADLINE + 1)
    assert report(coordinator, ws[2], parts[2], "heartbeat").json()["action"] == "continue"
    leasing.reap(coordinator.services)
    now = states(coordinator, job_id)
    assert now["r0 join"] == "ready" and now["r0 part 2"] == "cancelled"
    # the straggler is told to stop, and its late result is refused
    assert report(coordinator, ws[2], parts[2], "heartbeat").json()["action"] == "stop"
    assert report(coordinator, ws[2], parts[2], "complete", result={}).status_code == 409
    [joined] = lease(coordinator, ws[0])
    report(coordinator, ws[0], joined, "complete", result={})
    info = job(coordinator, job_id)
    assert info["state"] == "completed", info
    outputs = coordinator.client.get(f"{API}/jobs/{job_id}/outputs", headers=coordinator.user())
    assert [o["path"] for o in outputs.json()["outputs"]] == ["joined.txt"]


def test_quorum_not_met_keeps_waiting_past_the_deadline(coordinator: Coordinator) -> None:
    job_id = submit(coordinator)
    ws = workers(coordinator, PARTS)
    parts = [lease(coordinator, w)[0] for w in ws]
    report(coordinator, ws[0], parts[0], "complete", result={})
    coordinator.clock.advance(DEADLINE + 1)
    for w, t in zip(ws[1:], parts[1:], strict=True):  # still alive
        report(coordinator, w, t, "heartbeat")
    leasing.reap(coordinator.services)
    assert states(coordinator, job_id)["r0 join"] == "blocked"
    # the second part arrives after the deadline: the quorum is met at once
    report(coordinator, ws[1], parts[1], "complete", result={})
    assert states(coordinator, job_id)["r0 join"] == "ready"
    assert states(coordinator, job_id)["r0 part 2"] == "cancelled"


def test_a_failed_part_does_not_fail_the_job(coordinator: Coordinator) -> None:
    job_id = submit(coordinator)
    ws = workers(coordinator, PARTS, trusted=True)
    parts = [lease(coordinator, w)[0] for w in ws]
    r = report(coordinator, ws[0], parts[0], "fail", reason="bad data", retryable=False)
    assert r.status_code == 200
    assert job(coordinator, job_id)["state"] == "running"
    for w, t in zip(ws[1:], parts[1:], strict=True):
        report(coordinator, w, t, "complete", result={})
    # no part is open any more: no need to wait for the deadline
    assert states(coordinator, job_id)["r0 join"] == "ready"
    [joined] = lease(coordinator, ws[1])
    report(coordinator, ws[1], joined, "complete", result={})
    assert job(coordinator, job_id)["state"] == "completed"


def test_unreachable_quorum_fails_the_job_and_retry_resumes(coordinator: Coordinator) -> None:
    job_id = submit(coordinator, rounds=2)
    ws = workers(coordinator, PARTS, trusted=True)
    # round 0 goes ahead on a quorum; its late part is skipped
    parts = [lease(coordinator, w)[0] for w in ws]
    for w, t in zip(ws[:2], parts[:2], strict=True):
        report(coordinator, w, t, "complete", result={})
    coordinator.clock.advance(DEADLINE + 1)
    report(coordinator, ws[2], parts[2], "heartbeat")
    leasing.reap(coordinator.services)
    [joined] = lease(coordinator, ws[0])
    report(coordinator, ws[0], joined, "complete", result={})
    # round 1: two parts fail for good, so two of three can never be done
    parts = [lease(coordinator, w)[0] for w in ws[:2]]
    assert {t["name"] for t in parts} <= {f"r1 part {i}" for i in range(PARTS)}
    report(coordinator, ws[0], parts[0], "fail", reason="boom", retryable=False)
    assert job(coordinator, job_id)["state"] == "running"
    report(coordinator, ws[1], parts[1], "fail", reason="boom", retryable=False)
    info = job(coordinator, job_id)
    assert info["state"] == "failed" and "cannot reach its quorum" in info["error"]
    # retry resumes at round 1: round 0's skipped part is not trained again
    r = coordinator.client.post(f"{API}/jobs/{job_id}/retry", headers=coordinator.user())
    assert r.status_code == 200, r.text
    now = states(coordinator, job_id)
    assert now["r0 part 2"] == "cancelled" and now["r0 join"] == "done"
    assert [n for n, s in now.items() if s == "ready"] == [f"r1 part {i}" for i in range(PARTS)]
    for w in ws:
        [t] = lease(coordinator, w)
        report(coordinator, w, t, "complete", result={})
    [joined] = lease(coordinator, ws[0])
    report(coordinator, ws[0], joined, "complete", result={})
    assert job(coordinator, job_id)["state"] == "completed"


def test_claim_prefers_the_workers_own_affinity(coordinator: Coordinator) -> None:
    submit(coordinator, rounds=2)
    ws = workers(coordinator, PARTS)
    first = {i: lease(coordinator, w)[0] for i, w in enumerate(ws)}
    for i, t in first.items():
        report(coordinator, ws[i], t, "complete", result={})
    [joined] = lease(coordinator, ws[0])
    report(coordinator, ws[0], joined, "complete", result={})
    # round 1: the workers ask in reverse order; each gets the part it did in round 0
    for i in reversed(range(PARTS)):
        [again] = lease(coordinator, ws[i])
        assert again["payload"] == first[i]["payload"], (i, again["name"])


def test_retry_after_a_quorum_round_failed_reruns_its_join(coordinator: Coordinator) -> None:
    job_id = submit(coordinator)
    ws = workers(coordinator, PARTS, trusted=True)
    parts = [lease(coordinator, w)[0] for w in ws]
    for w, t in zip(ws[:2], parts[:2], strict=True):
        report(coordinator, w, t, "complete", result={})
    coordinator.clock.advance(DEADLINE + 1)
    report(coordinator, ws[2], parts[2], "heartbeat")
    leasing.reap(coordinator.services)  # goes ahead without part 2
    [joined] = lease(coordinator, ws[0])
    report(coordinator, ws[0], joined, "fail", reason="evaluate crashed", retryable=False)
    assert job(coordinator, job_id)["state"] == "failed"
    r = coordinator.client.post(f"{API}/jobs/{job_id}/retry", headers=coordinator.user())
    assert r.status_code == 200, r.text
    # the skipped part is settled: the join is ready again at once, not waiting for it
    assert states(coordinator, job_id) == {"r0 part 0": "done", "r0 part 1": "done",
                                           "r0 part 2": "cancelled", "r0 join": "ready"}
    [joined] = lease(coordinator, ws[1])
    report(coordinator, ws[1], joined, "complete", result={})
    assert job(coordinator, job_id)["state"] == "completed"
