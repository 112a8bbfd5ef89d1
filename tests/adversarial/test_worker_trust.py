"""What a hostile worker can do to jobs and to the farm, tried against a real `pilot server`
over SQLite and PostgreSQL (``coordinator.services.trust`` has the rules):

- hold more tasks than its slots, through the exchange and ``/workers/lease``, by asking
  and asking again (also at once, from parallel requests);
- fail other users' jobs with ``retryable=false``;
- re-register around a per-job block list;
- claim a sandbox it lacks to get ``--require-sandbox`` jobs;
- join with an approval-required join token and take tasks before an admin approves;
- register and fail faster than the per-minute limits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adversarial.conftest import API, Client, Coordinator, HostileWorker, running_coordinator

MAX_PREFETCH = 64  # the server's default max_prefetch (the conftest server keeps defaults)
BLOCK = 3  # the default worker_block_failures
TOKEN_BLOCK = 6  # the default join_token_block_failures


# ---------------------------------------------------------------- helpers


def sleep_job(user: Client, tasks: int, **fields: Any) -> int:
    return user.submit("sleep", {"tasks": tasks, "milliseconds": 0}, **fields)["id"]


def job(user: Client, job_id: int) -> dict[str, Any]:
    return user.ok("GET", f"/jobs/{job_id}")


def tasks_of(user: Client, job_id: int) -> list[dict[str, Any]]:
    return user.ok("GET", f"/jobs/{job_id}/tasks")["tasks"]


def held_by(coord: Coordinator, worker: HostileWorker) -> int:
    """The attempts the coordinator has leased to the worker, as the admin sees them."""
    [row] = [w for w in coord.admin.ok("GET", "/workers")["workers"]
             if w["id"] == worker.worker_id]
    return len(row["current_tasks"])


def refs(leases: list[dict[str, Any]]) -> list[dict[str, int]]:
    return [{"task_id": t["task_id"], "attempt": t["attempt"]} for t in leases]


def failed(leases: list[dict[str, Any]], retryable: bool = False) -> list[dict[str, Any]]:
    return [{"task_id": t["task_id"], "attempt": t["attempt"], "outcome": "failed",
             "reason": "cannot run this (says the worker)", "retryable": retryable}
            for t in leases]


def completed(leases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"task_id": t["task_id"], "attempt": t["attempt"], "outcome": "completed",
             "result": {}} for t in leases]


def sleep_worker(coord: Coordinator, name: str, **kwargs: Any) -> HostileWorker:
    return coord.worker(name, kinds=["sleep"], **kwargs)


def new_join_token(coord: Coordinator, **fields: Any) -> dict[str, Any]:
    return coord.admin.ok("POST", "/join-tokens", json=fields)


def run_all(coord: Coordinator, worker: HostileWorker, rounds: int = 100) -> None:
    """An honest worker: takes and completes every task it may, until none is left."""
    for _ in range(rounds):
        leases = worker.take(64, prefetch=MAX_PREFETCH)
        if not leases:
            return
        worker.sync(reports=completed(leases))


# ---------------------------------------------------------------- slots


def test_a_one_slot_worker_cannot_hold_150_tasks(coordinator: Coordinator) -> None:
    alice = coordinator.user("alice")
    job_id = sleep_job(alice, 300)
    greedy = sleep_worker(coordinator, "greedy", slots=1)
    bound = 1 + MAX_PREFETCH
    # the exchange: ask for 150 again and again, listing what it holds, then not listing
    # it (a "lost" answer: those are requeued, never doubled)
    first = greedy.sync(free_slots=64, prefetch=150)
    assert len(first["tasks"]) == bound
    again = greedy.sync(held=refs(first["tasks"]), free_slots=64, prefetch=150)
    assert again["tasks"] == []
    greedy.sync(free_slots=64, prefetch=150)
    assert held_by(coordinator, greedy) <= bound
    # the older lease endpoint: 64 a call, ten calls
    for _ in range(10):
        r = greedy.request("POST", "/workers/lease", json={"slots": 64, "wait_seconds": 0})
        assert r.status_code == 200, r.text
    assert held_by(coordinator, greedy) <= bound
    # both at once, from parallel requests
    def grab(i: int) -> int:
        if i % 2:
            return len(greedy.request("POST", "/workers/lease",
                                      json={"slots": 64, "wait_seconds": 0}).json()["tasks"])
        return len(greedy.request("POST", "/workers/sync",
                                  json={"free_slots": 64, "prefetch": 150}).json()["tasks"])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(grab, range(16)))
    assert held_by(coordinator, greedy) <= bound
    counts = job(alice, job_id)["task_counts"]
    assert counts.get("leased", 0) <= bound and sum(counts.values()) == 300


def test_the_coordinator_caps_claimed_slots_by_the_join_token(
        coordinator: Coordinator) -> None:
    alice = coordinator.user("alice")
    sleep_job(alice, 200)
    token = new_join_token(coordinator, name="small boxes", max_slots=2)
    assert token["max_slots"] == 2
    r = coordinator.register("liar", join_token=token["token"], slots=64, kinds=["sleep"])
    assert r.status_code == 200 and r.json()["slots"] == 2
    liar = HostileWorker(coordinator.url, r.json()["worker_token"],
                         worker_id=r.json()["worker_id"])
    coordinator.clients.append(liar)
    # no prefetch asked: it gets its allowed slots, not the 64 it claimed
    assert len(liar.take(64)) == 2
    [row] = [w for w in coordinator.admin.ok("GET", "/workers")["workers"]
             if w["id"] == liar.worker_id]
    assert row["slots"] == 2 and row["capabilities"]["slots"] == 64  # its claim, kept
    for _ in range(3):
        liar.request("POST", "/workers/lease", json={"slots": 64, "wait_seconds": 0})
    assert held_by(coordinator, liar) <= 2 + MAX_PREFETCH


# ---------------------------------------------------------------- retryable=false


def test_one_worker_saying_retry_cannot_help_fails_no_job(coordinator: Coordinator) -> None:
    """20 jobs of two users, 1,000 tasks; the attacker fails every task it gets with
    retryable=false. No job fails; only the tasks it failed are retried (once each), and
    an honest worker then finishes every job."""
    alice, bob = coordinator.user("alice"), coordinator.user("bob")
    jobs = {sleep_job(user, 50): user for user in (alice, bob) for _ in range(10)}
    mallory = sleep_worker(coordinator, "mallory", slots=1)
    started = time.monotonic()
    failed_attempts = 0
    for _ in range(60):
        leases = mallory.take(1, prefetch=MAX_PREFETCH)
        if not leases:
            break  # blocked from every job
        answer = mallory.sync(reports=failed(leases))
        assert all(v["accepted"] for v in answer["verdicts"])
        failed_attempts += len(leases)
    attack_seconds = time.monotonic() - started
    # one sync's worth (its slot and the prefetch), then it is paused: more than
    # worker_failures_per_minute (30) failure reports in a minute
    assert failed_attempts == 1 + MAX_PREFETCH
    assert mallory.take(1, prefetch=MAX_PREFETCH) == []
    [row] = [w for w in coordinator.admin.ok("GET", "/workers")["workers"]
             if w["id"] == mallory.worker_id]
    assert row["paused_until"] is not None and row["paused_until"] > time.time()
    for job_id, owner in jobs.items():
        info = job(owner, job_id)
        assert info["state"] in ("queued", "running"), info
        tasks = tasks_of(owner, job_id)
        assert len(tasks) == 50 and all(t["state"] == "ready" for t in tasks)
        assert all(t["failures"] <= 1 for t in tasks)  # each failed once at most
    assert failed_attempts == sum(t["failures"] for job_id, owner in jobs.items()
                                  for t in tasks_of(owner, job_id))
    # the attacker's join token is blocked from these jobs now, for all its untrusted
    # workers; a machine of another owner (another join token) does the work
    other = new_join_token(coordinator, name="an honest owner")
    honest = sleep_worker(coordinator, "honest", slots=4, join_token=other["token"])
    run_all(coordinator, honest)
    for job_id, owner in jobs.items():
        info = job(owner, job_id)
        assert info["state"] == "completed" and info["tasks_done"] == 50, info
    print(f"\n{failed_attempts} non-retryable failures in {attack_seconds:.2f} s: 0 jobs failed")


def test_the_older_fail_endpoint_is_weighed_the_same(coordinator: Coordinator) -> None:
    alice, bob = coordinator.user("alice"), coordinator.user("bob")
    jobs = {sleep_job(user, 2): user for user in (alice, bob)}
    mallory = sleep_worker(coordinator, "mallory", slots=4)
    leases = mallory.ok("POST", "/workers/lease", json={"slots": 4, "wait_seconds": 0})["tasks"]
    assert {t["job_id"] for t in leases} == set(jobs)
    for t in leases:
        r = mallory.request("POST", f"/attempts/{t['task_id']}/{t['attempt']}/fail",
                            json={"reason": "cannot run this", "retryable": False})
        assert r.status_code == 200, r.text
    for job_id, owner in jobs.items():
        info = job(owner, job_id)
        assert info["state"] == "running" and info["task_counts"] == {"ready": 2}, info
        assert all("taken as final only when" in t["error"] for t in tasks_of(owner, job_id))


def test_retry_cannot_help_is_final_when_another_join_token_agrees(
        coordinator: Coordinator) -> None:
    """The genuine user error still ends the job, with the reason shown."""
    alice = coordinator.user("alice")
    job_id = sleep_job(alice, 2, max_attempts=5)
    first = sleep_worker(coordinator, "first")
    [lease] = first.take(1)
    first.sync(reports=failed([lease]))
    assert job(alice, job_id)["state"] == "running"
    other = new_join_token(coordinator, name="another owner")
    r = coordinator.register("second", join_token=other["token"], kinds=["sleep"])
    second = HostileWorker(coordinator.url, r.json()["worker_token"],
                           worker_id=r.json()["worker_id"])
    coordinator.clients.append(second)
    retried = [t for t in second.take(2) if t["task_id"] == lease["task_id"]]
    assert retried and retried[0]["attempt"] == 2
    second.sync(reports=failed(retried))
    info = job(alice, job_id)
    assert info["state"] == "failed" and info["retryable"] is False
    assert "a retry cannot help" in info["error"] and "says the worker" in info["error"]


# ---------------------------------------------------------------- identity


def test_re_registering_does_not_shed_a_block(coordinator: Coordinator) -> None:
    alice = coordinator.user("alice")
    target = sleep_job(alice, 10)
    mallory = sleep_worker(coordinator, "mallory", slots=BLOCK)
    leases = mallory.take(BLOCK)
    mallory.sync(reports=failed(leases, retryable=True))
    assert mallory.take(BLOCK) == []  # blocked from the job (its own failures)
    # a new name, the same join token: the token's count stays; it gets one more round
    # before the token's own block, and no registration after that gets the job again
    names = iter(f"mallory-{i}" for i in range(10))
    again = sleep_worker(coordinator, next(names), slots=BLOCK)
    leases = again.take(BLOCK)
    assert len(leases) == TOKEN_BLOCK - BLOCK
    again.sync(reports=failed(leases, retryable=True))
    for _ in range(3):
        assert sleep_worker(coordinator, next(names), slots=BLOCK).take(BLOCK) == []
    # the block is per job: a new job's tasks still come; the target job lost nothing
    other = sleep_job(alice, 1)
    assert [t["job_id"] for t in sleep_worker(coordinator, next(names)).take(1)] == [other]
    info = job(alice, target)
    assert info["state"] == "running" and info["task_counts"] == {"ready": 10}
    # a machine its admin vouches for is not held to its join token's count
    vouched = sleep_worker(coordinator, "vouched", slots=BLOCK)
    assert vouched.take(1) == []
    coordinator.admin.ok("POST", f"/workers/{vouched.worker_id}/trust")
    run_all(coordinator, vouched)
    assert job(alice, target)["state"] == "completed"


# ---------------------------------------------------------------- claims


def test_a_sandbox_claim_needs_an_admin(coordinator: Coordinator) -> None:
    alice = coordinator.user("alice")
    boxed = alice.submit("sweep", {"command": ["echo", "{item}"], "items": "1-3"},
                         requirements={"sandbox": True})["id"]
    liar = coordinator.worker("liar", kinds=["sweep"], sandbox=True, slots=4)
    assert liar.take(4) == []
    listed = {w["id"]: w for w in alice.ok("GET", "/workers")["workers"]}
    assert listed[liar.worker_id]["claimed"]["sandbox"] is True
    assert listed[liar.worker_id]["trusted"] is False
    # only an admin may vouch for it
    r = alice.request("POST", f"/workers/{liar.worker_id}/trust")
    assert r.status_code == 403 and "admin" in r.json()["message"]
    assert liar.take(4) == []
    coordinator.admin.ok("POST", f"/workers/{liar.worker_id}/trust")
    leases = liar.take(4)
    assert {t["job_id"] for t in leases} == {boxed} and len(leases) == 3
    # untrusted again: no new sandbox task (what it holds it may finish)
    coordinator.admin.ok("POST", f"/workers/{liar.worker_id}/untrust")
    liar.sync(reports=failed(leases[:1], retryable=True), held=refs(leases[1:]))
    assert liar.sync(held=refs(leases[1:]), free_slots=4)["tasks"] == []
    assert job(alice, boxed)["task_counts"] == {"leased": 2, "ready": 1}


def test_an_approval_required_token_gives_no_tasks_before_approval(
        coordinator: Coordinator) -> None:
    alice = coordinator.user("alice")
    job_id = sleep_job(alice, 2)
    token = new_join_token(coordinator, name="strangers", approval_required=True)
    r = coordinator.register("stranger", join_token=token["token"], kinds=["sleep"], slots=2)
    assert r.status_code == 200 and r.json()["pending"] is True
    stranger = HostileWorker(coordinator.url, r.json()["worker_token"],
                             worker_id=r.json()["worker_id"])
    coordinator.clients.append(stranger)
    assert stranger.take(2) == []
    lease = stranger.request("POST", "/workers/lease", json={"slots": 2, "wait_seconds": 0})
    assert lease.status_code == 200 and lease.json()["tasks"] == []
    # restarting with its id and token keeps it pending
    back = httpx.post(f"{coordinator.url}{API}/workers/register", timeout=30, json={
        "join_token": token["token"], "name": "stranger", "worker_id": stranger.worker_id,
        "worker_token": stranger.token, "capabilities": {
            "cpu_cores": 1, "ram_bytes": 2**30, "kinds": ["sleep"], "slots": 2}})
    assert back.status_code == 200 and back.json()["pending"] is True
    stranger = HostileWorker(coordinator.url, back.json()["worker_token"],
                             worker_id=stranger.worker_id)
    coordinator.clients.append(stranger)
    assert stranger.take(2) == []
    [row] = [w for w in coordinator.admin.ok("GET", "/workers")["workers"]
             if w["id"] == stranger.worker_id]
    assert row["state"] == "pending"
    r = alice.request("POST", f"/workers/{stranger.worker_id}/approve")
    assert r.status_code == 403
    coordinator.admin.ok("POST", f"/workers/{stranger.worker_id}/approve")
    assert {t["job_id"] for t in stranger.take(2)} == {job_id}
    r = coordinator.admin.request("POST", f"/workers/{stranger.worker_id}/approve")
    assert r.status_code == 409 and "not waiting" in r.json()["message"]
    assert job(alice, job_id)["task_counts"] == {"leased": 2}


# ---------------------------------------------------------------- rate limits

LIMIT = 5  # registrations per join token and failure reports per worker, a minute


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def limited(request: pytest.FixtureRequest, tmp_path: Path,
            fresh_database: Callable[..., str]) -> Iterator[Coordinator]:
    """A server with low per-minute limits (the conftest's keeps the defaults)."""
    url = fresh_database(request.param, migrated=True)
    with running_coordinator(tmp_path / "data", request.param, url,
                             join_token_registrations_per_minute=LIMIT,
                             worker_failures_per_minute=LIMIT) as coord:
        yield coord


def within_one_window(attack: Callable[[], None], tries: int = 3) -> None:
    """Run ``attack`` so that it falls inside one counting window (one minute of the
    clock): an attack that straddles a window boundary is run again."""
    for _ in range(tries):
        window = math.floor(time.time() / 60)
        attack()
        if math.floor(time.time() / 60) == window:
            return
    raise AssertionError("the attack never fit in one minute")


def test_registrations_per_join_token_are_limited(limited: Coordinator) -> None:
    tokens = iter(range(10))

    def attack() -> None:
        token = new_join_token(limited, name=f"flood {next(tokens)}")
        for i in range(LIMIT):
            r = limited.register(f"bot-{i}", join_token=token["token"])
            assert r.status_code == 200, r.text
        r = limited.register("one-too-many", join_token=token["token"])
        assert r.status_code == 429, r.text
        assert f"join token {token['id']}" in r.json()["message"]
        assert int(r.headers["Retry-After"]) >= 1
        # the refused registration used no use of the token; another token is unaffected
        assert limited.register("elsewhere").status_code == 200

    within_one_window(attack)


def test_failure_reports_past_the_limit_pause_the_worker(limited: Coordinator) -> None:
    alice = limited.user("alice")
    rounds: list[list[int]] = []

    def attack() -> None:
        jobs = [sleep_job(alice, 1) for _ in range(LIMIT + 2)]  # one failure on each
        rounds.append(jobs)
        quick = sleep_worker(limited, f"quick-{len(rounds)}", slots=1)
        for _ in range(LIMIT):  # one failure report a sync, each on another job
            [lease] = quick.take(1)
            quick.sync(reports=failed([lease]))
        [lease] = quick.take(1)  # within the limit still
        # one too many: paused for the minute, from this very sync on
        assert quick.sync(reports=failed([lease]), free_slots=1)["tasks"] == []
        assert quick.take(1) == []
        assert quick.request("POST", "/workers/lease",
                             json={"slots": 1, "wait_seconds": 0}).json()["tasks"] == []
        # nothing failed; another worker is not paused
        assert all(job(alice, j)["state"] != "failed" for j in jobs)
        other = new_join_token(limited, name=f"calm {len(rounds)}")
        calm = sleep_worker(limited, f"calm-{len(rounds)}", join_token=other["token"])
        assert len(calm.take(1)) == 1

    within_one_window(attack)
