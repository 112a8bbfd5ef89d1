"""The worker exchange (POST /workers/sync) through the real API on SQLite, PostgreSQL and
MariaDB: many results in one sync, exactly-once under a resent sync, leases lost on the
way, stops, one expiry per worker, the hold limit, fitting by requirements in SQL, long
polls woken by kind, leaving."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from parallel_pilot.coordinator.routes import workers as worker_routes
from parallel_pilot.coordinator.services import leasing, sync
from tests.integration.conftest import Coordinator
from tests.integration.test_quorum import PARTS, QuorumKind, quorum_kind  # noqa: F401

API = "/api/v1"


def register(coord: Coordinator, name: str, **caps: Any) -> dict[str, str]:
    return register_with_id(coord, name, **caps)[0]


def register_with_id(coord: Coordinator, name: str, **caps: Any,
                     ) -> tuple[dict[str, str], int]:
    capabilities = {"cpu_cores": 2, "ram_bytes": 2**30, "kinds": ["sleep"], **caps}
    r = coord.client.post(f"{API}/workers/register", json={
        "join_token": coord.join_token, "name": name, "capabilities": capabilities})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['worker_token']}"}, r.json()["worker_id"]


def submit(coord: Coordinator, tasks: int = 1, **extra: Any) -> int:
    r = coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": "sleep", "params": {"tasks": tasks, "milliseconds": 0}, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def sync_(coord: Coordinator, worker: dict[str, str], **body: Any) -> dict[str, Any]:
    r = coord.client.post(f"{API}/workers/sync", headers=worker, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def refs(leases: list[dict]) -> list[dict[str, int]]:
    return [{"task_id": t["task_id"], "attempt": t["attempt"]} for t in leases]


def done(leases: list[dict], **extra: Any) -> list[dict[str, Any]]:
    return [{"task_id": t["task_id"], "attempt": t["attempt"], "outcome": "completed",
             "result": {"n": t["task_id"]}, **extra} for t in leases]


def job(coord: Coordinator, job_id: int) -> dict[str, Any]:
    return coord.client.get(f"{API}/jobs/{job_id}", headers=coord.user()).json()


def tasks_of(coord: Coordinator, job_id: int) -> list[dict[str, Any]]:
    return coord.client.get(f"{API}/jobs/{job_id}/tasks", headers=coord.user()).json()["tasks"]


def worker_rows(coord: Coordinator) -> dict[str, dict[str, Any]]:
    listed = coord.client.get(f"{API}/workers", headers=coord.user()).json()["workers"]
    return {w["name"]: w for w in listed}


def test_many_results_in_one_sync_and_a_resent_sync_applies_nothing(
        coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=5)
    worker = register(coord, "w", slots=5)
    leases = sync_(coord, worker, free_slots=5)["tasks"]
    assert len(leases) == 5 and {t["attempt"] for t in leases} == {1}
    request = {"reports": done(leases, log_lines=["ran"]), "held": [], "free_slots": 5}
    first = sync_(coord, worker, **request)
    assert [v["accepted"] for v in first["verdicts"]] == [True] * 5
    assert first["tasks"] == [] and first["stop"] == []
    info = job(coord, job_id)
    assert info["state"] == "completed" and info["tasks_done"] == 5
    assert all(t["result"] == {"n": t["id"]} for t in tasks_of(coord, job_id))
    # the answer was lost; the worker sends the same reports again: nothing twice
    again = sync_(coord, worker, **request)
    assert [v["accepted"] for v in again["verdicts"]] == [False] * 5
    assert all("done" in v["reason"] for v in again["verdicts"])
    assert job(coord, job_id)["tasks_done"] == 5
    assert worker_rows(coord)["w"]["tasks_done"] == 5
    logs = coord.client.get(f"{API}/jobs/{job_id}/logs", headers=coord.user()).json()["lines"]
    assert [line["line"] for line in logs] == ["ran"] * 5


def test_failed_released_and_running_reports(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=3, max_attempts=2)
    worker = register(coord, "w", slots=3)
    a, b, c = sync_(coord, worker, free_slots=3)["tasks"]
    answer = sync_(coord, worker, held=refs([c]), reports=[
        {**refs([a])[0], "outcome": "failed", "reason": "boom"},
        {**refs([b])[0], "outcome": "released"},
        {**refs([c])[0], "outcome": "running", "progress": 0.5, "message": "half"},
        {**refs([c])[0], "outcome": "running", "progress": 0.6},
    ])
    assert [v["accepted"] for v in answer["verdicts"]] == [True, True, True, False]
    assert "twice" in answer["verdicts"][3]["reason"]
    by_id = {t["id"]: t for t in tasks_of(coord, job_id)}
    assert by_id[a["task_id"]]["state"] == "ready" and by_id[a["task_id"]]["failures"] == 1
    assert "boom" in by_id[a["task_id"]]["error"]
    assert by_id[b["task_id"]]["state"] == "ready" and by_id[b["task_id"]]["failures"] == 0
    assert by_id[c["task_id"]]["progress"] == 0.5 and by_id[c["task_id"]]["message"] == "half"
    # the failed and released tasks are leased again (this worker has two slots free)
    again = sync_(coord, worker, held=refs([c]), free_slots=2)["tasks"]
    assert sorted((t["task_id"], t["attempt"]) for t in again) == sorted(
        [(a["task_id"], 2), (b["task_id"], 2)])
    # a second failure of the task, past max_attempts, fails the job
    [a2] = [t for t in again if t["task_id"] == a["task_id"]]
    sync_(coord, worker, held=refs([c] + [t for t in again if t is not a2]),
          reports=[{**refs([a2])[0], "outcome": "failed", "reason": "boom again"}])
    info = job(coord, job_id)
    assert info["state"] == "failed" and "after 2 attempts" in info["error"]


def test_a_lease_lost_on_the_way_is_requeued_by_the_next_sync(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=2, max_attempts=1)
    worker = register(coord, "w", slots=2)
    first, lost = sync_(coord, worker, free_slots=2)["tasks"]
    # the worker only ever saw the first lease (the answer with the second never came)
    answer = sync_(coord, worker, held=refs([first]))
    assert answer["tasks"] == [] and answer["stop"] == []
    by_id = {t["id"]: t for t in tasks_of(coord, job_id)}
    assert by_id[lost["task_id"]]["state"] == "ready"
    assert by_id[lost["task_id"]]["failures"] == 0  # losing an answer is not a failure
    assert by_id[first["task_id"]]["state"] == "leased"
    logs = coord.client.get(f"{API}/jobs/{job_id}/logs", headers=coord.user()).json()["lines"]
    assert any("never reached worker w" in line["line"] for line in logs)
    [again] = sync_(coord, worker, held=refs([first]), free_slots=1)["tasks"]
    assert (again["task_id"], again["attempt"]) == (lost["task_id"], 2)


def test_a_cancelled_jobs_attempt_is_stopped(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=1)
    other_job = submit(coord, tasks=1)
    worker = register(coord, "w", slots=2)
    leases = sync_(coord, worker, free_slots=2)["tasks"]
    [mine] = [t for t in leases if t["job_id"] == job_id]
    [keep] = [t for t in leases if t["job_id"] == other_job]
    assert coord.client.post(f"{API}/jobs/{job_id}/cancel",
                             headers=coord.user()).status_code == 200
    answer = sync_(coord, worker, held=refs(leases), reports=[
        {**refs([mine])[0], "outcome": "running", "progress": 0.1}])
    assert answer["stop"] == [{"task_id": mine["task_id"], "attempt": mine["attempt"],
                               "reason": "the task was cancelled"}]
    assert answer["verdicts"][0]["accepted"] is False
    late = sync_(coord, worker, held=refs([keep]), reports=done([mine]))
    assert late["verdicts"][0]["accepted"] is False
    assert job(coord, job_id)["state"] == "cancelled"


def test_one_sync_renews_every_lease_the_worker_holds(coordinator: Coordinator) -> None:
    coord = coordinator
    submit(coord, tasks=3)
    worker = register(coord, "w", slots=3)
    leases = sync_(coord, worker, free_slots=3)["tasks"]
    lease_seconds = coord.services.settings.lease_seconds
    for _ in range(3):  # well past one lease period in all
        coord.clock.advance(lease_seconds * 0.75)
        answer = sync_(coord, worker, held=refs(leases))
        assert answer["lease_expires_at"] == coord.clock.now + lease_seconds
        assert leasing.reap(coord.services) == 0
    coord.clock.advance(lease_seconds + 1)  # silence: now the reaper takes them
    assert leasing.reap(coord.services) == 3


@pytest.mark.parametrize("max_prefetch", [64, 4])
def test_a_worker_holds_at_most_its_slots_plus_granted_prefetch(
        database_url: str, tmp_path: Any, max_prefetch: int) -> None:
    from tests.integration.conftest import make_coordinator
    coord = make_coordinator(database_url, tmp_path, max_prefetch=max_prefetch)
    with coord.client:
        job_id = submit(coord, tasks=150)
        worker = register(coord, "greedy", slots=1)
        first = sync_(coord, worker, free_slots=1, prefetch=256)
        assert first["prefetch_granted"] == max_prefetch
        assert len(first["tasks"]) == 1 + max_prefetch
        # asking again while holding all of them: nothing more
        second = sync_(coord, worker, held=refs(first["tasks"]), free_slots=1, prefetch=256)
        assert second["tasks"] == []
        held = [t for t in tasks_of(coord, job_id) if t["state"] == "leased"]
        assert len(held) == 1 + max_prefetch
        # finishing one frees exactly one place
        third = sync_(coord, worker, held=refs(first["tasks"][1:]),
                      reports=done(first["tasks"][:1]), free_slots=1, prefetch=256)
        assert len(third["tasks"]) == 1
    coord.services.engine.dispose()


def test_tasks_go_only_to_workers_that_fit(coordinator: Coordinator) -> None:
    coord = coordinator
    # many tasks nobody here can take, ahead in priority: they must not hide the rest
    blocked = submit(coord, tasks=40, priority=50, requirements={"tags": ["nowhere"]})
    gpu = submit(coord, tasks=2, requirements={"gpu": True})
    sandbox = submit(coord, tasks=2, requirements={"sandbox": True})
    tagged = submit(coord, tasks=2, requirements={"tags": ["big", "fast"]})
    blender = submit(coord, tasks=2, requirements={"min_blender": "4.2"})
    plain = submit(coord, tasks=2)
    gpus = [{"name": "RTX", "memory_bytes": 2**33}] * 2  # a GPU slot per GPU task
    sandboxed, sandboxed_id = register_with_id(coord, "sandbox", slots=8, sandbox=True)
    r = coord.client.post(f"{API}/workers/{sandboxed_id}/trust", headers=coord.user())
    assert r.status_code == 200, r.text
    workers = {
        "gpu": register(coord, "gpu", slots=8, gpus=gpus),
        "sandbox": sandboxed,
        "tagged": register(coord, "tagged", slots=8, tags=["fast", "big", "x"]),
        "old-blender": register(coord, "old-blender", slots=8, blender_version="3.4.1"),
        "blender": register(coord, "blender", slots=8, blender_version="5.0.1"),
    }
    got = {name: sync_(coord, w, free_slots=8)["tasks"] for name, w in workers.items()}
    jobs_of = {name: sorted({t["job_id"] for t in leases}) for name, leases in got.items()}
    # the plain job's two tasks go to the first workers to ask; each worker otherwise
    # gets only the job it fits
    assert jobs_of["gpu"] == [gpu, plain]
    assert {t["job_id"] for t in got["gpu"] if t["job_id"] == gpu} == {gpu}
    assert jobs_of["sandbox"] == [sandbox]
    assert jobs_of["tagged"] == [tagged]
    assert jobs_of["old-blender"] == []
    assert jobs_of["blender"] == [blender]
    assert all(len([t for t in got[n] if t["job_id"] != plain]) == 2 for n in
               ("gpu", "sandbox", "tagged", "blender"))
    assert job(coord, blocked)["task_counts"] == {"ready": 40}
    # a sandbox is a claim: believed only of a worker an admin marked trusted
    more_sandbox = submit(coord, tasks=2, requirements={"sandbox": True})
    claims_sandbox = register(coord, "claims-sandbox", slots=8, sandbox=True)
    assert sync_(coord, claims_sandbox, free_slots=8)["tasks"] == []
    later = sync_(coord, sandboxed, held=refs(got["sandbox"]), free_slots=6)["tasks"]
    assert {t["job_id"] for t in later} == {more_sandbox} and len(later) == 2
    assert job(coord, more_sandbox)["task_counts"] == {"leased": 2}


@pytest.mark.parametrize("owners", [1, 2])
def test_the_claim_reads_an_index_range_per_kind_and_set(coordinator: Coordinator,
                                                         owners: int) -> None:
    """EXPLAIN of the claim over a queue mostly of tasks this worker cannot take (ahead in
    priority): an index on (state, kind, set, owner, priority, job, id) per owner; for one
    owner no sort at all (SQLite: no temp b-tree; PostgreSQL: an index scan under the
    Limit); for two, only the merge of the branches' few rows is sorted (no scan of the
    queue)."""
    from parallel_pilot.store.queries import sync as qs
    coord = coordinator
    engine = coord.services.engine
    submit(coord, tasks=3000, priority=50, requirements={"gpu": True})
    submit(coord, tasks=10)
    with engine.begin() as conn:  # statistics, as a database that has run a while has
        conn.exec_driver_sql("ANALYZE" if engine.dialect.name != "mysql" else
                             "ANALYZE TABLE tasks")
    statement = qs._claim_statement(1, owners, lock=False)
    params: dict[str, Any] = {"w": 1, "threshold": 3, "limit": 9, "k0": "sleep", "s0": 0,
                              "jt": 1, "token_threshold": 6}
    for o in range(owners):
        params.update({f"o{o}": 1 + o, f"running{o}": 0, f"owner_rank{o}": o})
    compiled = statement.compile(engine)
    values = compiled.construct_params(params)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(r) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + str(compiled),
                tuple(values[k] for k in compiled.positiontup or [])))
            assert plan.count("ix_tasks_fair") == owners, plan
            assert owners > 1 or "TEMP B-TREE" not in plan, plan
        elif engine.dialect.name == "postgresql":
            plan = " ".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled),
                                                               values))
            assert plan.count("ix_tasks_fair") == owners, plan
            assert "Seq Scan on tasks" not in plan, plan
            assert owners > 1 or "Sort" not in plan, plan
        else:
            pytest.skip("EXPLAIN checked on SQLite and PostgreSQL")


@pytest.fixture
def waiting(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch,
            ) -> Iterator[list[int]]:
    """Long polls that wait long and re-check only when woken; yields a list that counts
    the claims of woken polls."""
    coordinator.services.settings.long_poll_seconds = 30.0
    monkeypatch.setattr(worker_routes, "RECHECK_SECONDS", 60.0)
    claims: list[int] = []
    real = sync.poll

    def counted(*args: Any) -> Any:
        claims.append(1)
        return real(*args)

    monkeypatch.setattr(sync, "poll", counted)
    yield claims


def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        event.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_long_poll_is_woken_by_a_submit_not_by_unrelated_work(
        coordinator: Coordinator, waiting: list[int]) -> None:
    coord = coordinator
    notifier = coord.services.notifier
    idle = register(coord, "idle", kinds=["sleep"])
    busy = register(coord, "busy", kinds=["sleep", "sweep"], slots=2)
    submit(coord, tasks=1)
    sweep = coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": "sweep", "params": {"command": ["true"], "items": ["1"]}})
    assert sweep.status_code == 201, sweep.text
    held = sync_(coord, busy, free_slots=2)["tasks"]
    assert {t["kind"] for t in held} == {"sleep", "sweep"}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(sync_, coord, idle, free_slots=1, wait_seconds=25)
        wait_until(lambda: notifier.waiting() == 1, "the idle worker's poll to wait")
        # another worker finishes its sleep task and hands back the sweep task: neither
        # is work the idle worker can take
        [s] = [t for t in held if t["kind"] == "sweep"]
        [z] = [t for t in held if t["kind"] == "sleep"]
        sync_(coord, busy, reports=done([z]) + [{**refs([s])[0], "outcome": "released"}])
        assert notifier.waiting() == 1 and waiting == [] and not answer.done()
        job_id = submit(coord, tasks=1)
        leases = answer.result(timeout=20)["tasks"]
    assert [t["job_id"] for t in leases] == [job_id]
    assert len(waiting) == 1  # one wake-up, one claim


def test_one_ready_task_wakes_one_waiter(coordinator: Coordinator, waiting: list[int]) -> None:
    coord = coordinator
    notifier = coord.services.notifier
    submit(coord, tasks=1)
    holder = register(coord, "holder")
    [task] = sync_(coord, holder, free_slots=1)["tasks"]
    idle = [register(coord, f"idle{i}") for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        answers = []
        for i, (w, seconds) in enumerate(zip(idle, (20, 3, 3), strict=True)):
            answers.append(pool.submit(sync_, coord, w, free_slots=1, wait_seconds=seconds))
            wait_until(lambda n=i + 1: notifier.waiting() == n, f"{i + 1} polls waiting")
        sync_(coord, holder, reports=[{**refs([task])[0], "outcome": "released"}])
        first = answers[0].result(timeout=20)  # first come, first woken
        rest = [a.result(timeout=20) for a in answers[1:]]
    assert [t["task_id"] for t in first["tasks"]] == [task["task_id"]]
    assert all(r["tasks"] == [] for r in rest)
    assert len(waiting) == 1  # the two others were never woken: they timed out


def test_leaving_hands_back_everything_at_once(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=4, max_attempts=1)
    worker = register(coord, "w", slots=2)
    leases = sync_(coord, worker, free_slots=2, prefetch=2)["tasks"]
    assert len(leases) == 4
    answer = sync_(coord, worker, leaving=True, reports=done(leases[:1]),
                   held=refs(leases[1:]), free_slots=2)
    assert answer["tasks"] == [] and answer["verdicts"][0]["accepted"] is True
    states = sorted((t["state"], t["failures"]) for t in tasks_of(coord, job_id))
    assert states == [("done", 0), ("ready", 0), ("ready", 0), ("ready", 0)]
    assert worker_rows(coord)["w"]["state"] == "offline"
    # a worker that left gets nothing, even asking again
    assert sync_(coord, worker, free_slots=2)["tasks"] == []
    other = register(coord, "other", slots=3)
    assert len(sync_(coord, other, free_slots=3)["tasks"]) == 3


def test_a_revoked_worker_is_refused_at_once(coordinator: Coordinator) -> None:
    coord = coordinator
    worker = register(coord, "w")
    sync_(coord, worker)  # its row is in the token cache now
    worker_id = worker_rows(coord)["w"]["id"]
    assert coord.client.post(f"{API}/workers/{worker_id}/revoke",
                             headers=coord.user()).status_code == 200
    r = coord.client.post(f"{API}/workers/sync", headers=worker, json={})
    assert r.status_code == 401


def test_a_sync_that_finishes_dependencies_wakes_a_worker_for_the_dependent(
        coordinator: Coordinator, waiting: list[int]) -> None:
    coord = coordinator
    notifier = coord.services.notifier
    r = coord.client.post(f"{API}/jobs", headers=coord.user(),
                          json={"kind": QuorumKind.name, "params": {"rounds": 1}})
    job_id = r.json()["id"]
    parts_worker = register(coord, "parts", kinds=[QuorumKind.name], slots=PARTS)
    join_worker = register(coord, "join", kinds=[QuorumKind.name])
    parts = sync_(coord, parts_worker, free_slots=PARTS)["tasks"]
    assert len(parts) == PARTS
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(sync_, coord, join_worker, free_slots=1, wait_seconds=25)
        wait_until(lambda: notifier.waiting() == 1, "the join worker's poll to wait")
        # all parts done in one sync, and no slot asked for: the join is the other's
        sync_(coord, parts_worker, reports=done(parts))
        [join] = answer.result(timeout=20)["tasks"]
    assert join["name"] == "r0 join" and len(waiting) == 1
    sync_(coord, join_worker, reports=done([join]))
    assert job(coord, job_id)["state"] == "completed"


def test_a_worker_fitting_many_requirement_sets_claims_from_all(
        coordinator: Coordinator) -> None:
    """More (kind, set) pairs than one claim reads range by range: one filtered scan."""
    from parallel_pilot.store.queries import sync as qs
    coord = coordinator
    sets = qs.MAX_CLAIM_BRANCHES + 3
    job_ids = [submit(coord, tasks=1, requirements={"tags": [f"t{i}"]}) for i in range(sets)]
    unfit = submit(coord, tasks=1, priority=10, requirements={"tags": ["elsewhere"]})
    worker = register(coord, "w", slots=64, tags=[f"t{i}" for i in range(sets)])
    leases = sync_(coord, worker, free_slots=64)["tasks"]
    assert sorted(t["job_id"] for t in leases) == job_ids
    assert job(coord, unfit)["task_counts"] == {"ready": 1}
