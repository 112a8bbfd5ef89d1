"""GPU slots on SQLite, PostgreSQL and MariaDB: a worker with two GPUs is never leased a
third concurrent GPU task (its CPU slots, its prefetch and what it says about its free
GPUs aside: the coordinator counts the GPUs of the attempts it holds), a task that needs
two GPUs waits for both, a Cycles-GPU render holds a GPU, a join token's max_slots caps
the GPU slots, and the long poll and ``/workers/lease`` keep the same rule."""

from __future__ import annotations

from typing import Any

from parallel_pilot.core.requirements import GIB, parse_requires
from tests.integration.conftest import Coordinator
from tests.integration.test_sync import done, job, refs, register_with_id, submit, sync_

API = "/api/v1"
TWO_GPUS = [{"name": "Test GPU", "memory_bytes": 8 * GIB}] * 2


def gpu_tasks(leases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in leases if t["gpus"]]


def test_two_gpus_never_hold_a_third_gpu_task(coordinator: Coordinator) -> None:
    coord = coordinator
    worker, worker_id = register_with_id(coord, "gpu2", slots=2, gpus=TWO_GPUS)
    gpu_job = submit(coord, tasks=12, requirements=parse_requires("gpu"))
    cpu_job = submit(coord, tasks=12)
    # it asks for far more than it has, and says it has 8 free GPUs: not believed
    first = sync_(coord, worker, free_slots=2, prefetch=4, free_gpus=8)["tasks"]
    assert len(gpu_tasks(first)) == 2 and {t["gpus"] for t in gpu_tasks(first)} == {1}
    assert len(first) - 2 == 6  # CPU tasks: 2 slots + 4 prefetch
    held = first
    again = sync_(coord, worker, held=refs(held), free_slots=2, prefetch=4, free_gpus=8)
    assert again["tasks"] == []  # both GPUs and every CPU slot are taken
    seen_gpu = 2
    peak = 2
    for _ in range(30):  # finish one GPU task (and the CPU ones) per round
        gpu_held = gpu_tasks(held)
        finished = gpu_held[:1] + [t for t in held if not t["gpus"]]
        kept = [t for t in held if t not in finished]
        answer = sync_(coord, worker, reports=done(finished), held=refs(kept),
                       free_slots=2, prefetch=4, free_gpus=8)
        held = kept + answer["tasks"]
        peak = max(peak, len(gpu_tasks(held)))
        assert len(gpu_tasks(held)) <= 2, held
        seen_gpu += len(gpu_tasks(answer["tasks"]))
        if not held:
            break
    assert peak == 2 and seen_gpu == 12
    assert job(coord, gpu_job)["state"] == job(coord, cpu_job)["state"] == "completed"
    listed = {w["id"]: w for w in coord.client.get(f"{API}/workers",
                                                   headers=coord.user()).json()["workers"]}
    assert (listed[worker_id]["slots"], listed[worker_id]["gpu_slots"]) == (2, 2)


def test_the_worker_word_can_only_lower_the_gpus_granted(coordinator: Coordinator) -> None:
    coord = coordinator
    worker = register_with_id(coord, "gpu2", gpus=TWO_GPUS)[0]
    submit(coord, tasks=4, requirements=parse_requires("gpu"))
    # a GPU still busy with a stopped task's child: the worker says one is free
    assert len(sync_(coord, worker, free_gpus=1)["tasks"]) == 1


def test_a_two_gpu_task_waits_for_both_gpus(coordinator: Coordinator) -> None:
    coord = coordinator
    worker = register_with_id(coord, "gpu2", gpus=TWO_GPUS)[0]
    one = submit(coord, tasks=1, requirements=parse_requires("gpu"))
    [first] = sync_(coord, worker)["tasks"]
    assert first["job_id"] == one and first["gpus"] == 1
    both = submit(coord, tasks=1, requirements=parse_requires("gpu=2"))
    # one GPU is free, the task needs two: nothing yet
    assert sync_(coord, worker, held=refs([first]), free_slots=1)["tasks"] == []
    [second] = sync_(coord, worker, reports=done([first]), free_slots=1)["tasks"]
    assert second["job_id"] == both and second["gpus"] == 2


def test_a_cycles_gpu_render_holds_a_gpu(coordinator: Coordinator) -> None:
    coord = coordinator
    worker = register_with_id(coord, "r", gpus=TWO_GPUS[:1], render_devices=[
        {"type": "CUDA", "name": "Test GPU", "id": "CUDA_Test GPU_0000:01:00"}])[0]
    submit(coord, tasks=3, requirements={"render_gpu": True})
    leases = sync_(coord, worker, free_slots=1, prefetch=2)["tasks"]
    assert [t["gpus"] for t in leases] == [1]


def test_a_join_token_caps_the_gpu_slots(coordinator: Coordinator) -> None:
    coord = coordinator
    made = coord.client.post(f"{API}/join-tokens", headers=coord.user(),
                             json={"max_slots": 1})
    assert made.status_code in (200, 201), made.text
    r = coord.client.post(f"{API}/workers/register", json={
        "join_token": made.json()["token"], "name": "claims-eight", "capabilities": {
            "cpu_cores": 2, "ram_bytes": GIB, "kinds": ["sleep"], "slots": 1,
            "gpus": TWO_GPUS * 4}})
    assert r.status_code == 200 and r.json()["gpu_slots"] == 1
    worker = {"Authorization": f"Bearer {r.json()['worker_token']}"}
    submit(coord, tasks=4, requirements=parse_requires("gpu"))
    assert len(sync_(coord, worker, free_gpus=8)["tasks"]) == 1


def test_the_lease_endpoint_and_long_poll_keep_the_gpu_rule(coordinator: Coordinator) -> None:
    coord = coordinator
    worker = register_with_id(coord, "gpu2", slots=4, gpus=TWO_GPUS)[0]
    submit(coord, tasks=6, requirements=parse_requires("gpu"))
    r = coord.client.post(f"{API}/workers/lease", headers=worker,
                          json={"slots": 4, "wait_seconds": 0})
    assert r.status_code == 200 and len(r.json()["tasks"]) == 2
    held = r.json()["tasks"]
    # a long poll (it waits, then claims again under the worker's lock): still nothing
    polled = sync_(coord, worker, held=refs(held), free_slots=4, wait_seconds=0.3)
    assert polled["tasks"] == []
