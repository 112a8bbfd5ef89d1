"""GPU slots on the worker, without sockets: the state machine gives each GPU task its own
GPUs (never one GPU to two running attempts), frees them when the attempt's child ends,
lets a GPU task wait for a GPU while CPU tasks start, hands back what cannot fit; and what
a child is shown (``kinds.gpu_env``) and which Cycles devices a render gets
(``restrict_to_gpus``), and that a reused child serves only attempts given its GPUs."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from parallel_pilot.core.protocol import (
    AttemptReport,
    AttemptStop,
    RenderDevice,
    SyncResponse,
    TaskLease,
)
from parallel_pilot.kinds.gpu_env import gpu_env, with_gpus
from parallel_pilot.kinds.python.warm import RunnerPool
from parallel_pilot.kinds.render.devices import render_device, restrict_to_gpus
from parallel_pilot.kinds.warm import WarmRunner
from parallel_pilot.worker.state import Instruction, Send, Start, WorkerState

_sync_ids = itertools.count(1)


def lease(task_id: int, gpus: int = 0) -> TaskLease:
    return TaskLease(task_id=task_id, attempt=1, job_id=1, kind="sweep", name=f"t{task_id}",
                     payload={}, inputs={}, lease_expires_at=0.0, heartbeat_seconds=3.0,
                     gpus=gpus)


def answer(tasks: list[TaskLease], stop: list[int] = ()) -> SyncResponse:  # type: ignore[assignment]
    return SyncResponse(tasks=tasks, lease_expires_at=0.0, sync_seconds=3.0,
                        lease_seconds=60.0, prefetch_granted=4,
                        stop=[AttemptStop(task_id=t, attempt=1, reason="cancelled")
                              for t in stop])


def deliver(state: WorkerState, now: float, tasks: list[TaskLease],
            stop: list[int] = ()) -> list[Instruction]:  # type: ignore[assignment]
    """The sync the state asks for now (or the one in flight; ``now`` is a heartbeat
    after the last) answered with ``tasks``."""
    out = state.decide(now)
    sends = [i for i in out if isinstance(i, Send)]
    assert state.in_flight, out
    sync_id = sends[-1].sync_id if sends else state._flight.sync_id  # type: ignore[union-attr]
    state.answered(sync_id, answer(tasks, stop), now)
    return state.decide(now)


def started(out: list[Instruction]) -> dict[int, tuple[int, ...]]:
    return {i.lease.task_id: i.gpus for i in out if isinstance(i, Start)}


def done(task_id: int) -> AttemptReport:
    return AttemptReport(task_id=task_id, attempt=1, outcome="completed", result={})


def test_each_gpu_task_gets_its_own_gpu_and_cpu_tasks_none() -> None:
    state = WorkerState(1, gpus=2)
    out = started(deliver(state, 0.0, [lease(1, gpus=1), lease(2), lease(3, gpus=1)]))
    assert out == {1: (0,), 2: (), 3: (1,)}
    assert state.free_gpus() == []


def test_a_gpu_lease_beyond_the_gpus_goes_back_and_a_freed_gpu_is_given_again() -> None:
    state = WorkerState(1, gpus=2)
    deliver(state, 0.0, [lease(1, gpus=1), lease(2, gpus=1)])
    out = deliver(state, 5.0, [lease(3, gpus=1)])  # a third: no GPU for it
    assert started(out) == {}
    assert state.reports[(3, 1)].outcome == "released"
    state.finished(done(1), 1.0)  # GPU 0 is free again
    assert state.free_gpus() == [0]
    out = deliver(state, 10.0, [lease(4, gpus=1)])
    assert started(out) == {4: (0,)}
    assert state.gpus_of((2, 1)) == (1,)


def test_the_request_says_free_cpu_slots_and_free_gpus_apart() -> None:
    state = WorkerState(2, gpus=3)
    deliver(state, 0.0, [lease(1, gpus=2), lease(2)])
    state.finished(done(2), 0.5)
    request = next(i for i in state.decide(5.0) if isinstance(i, Send)).request
    assert (request.free_slots, request.free_gpus) == (2, 1)
    assert WorkerState(1).decide(0.0)[0].request.free_gpus is None  # type: ignore[union-attr]


def test_a_stopped_attempt_keeps_its_gpu_until_its_child_ends() -> None:
    """The coordinator took the task back (cancelled): it may lease a new GPU task at once,
    which waits for the GPU while a CPU task leased with it starts."""
    state = WorkerState(1, gpus=1)
    deliver(state, 0.0, [lease(1, gpus=1)])
    out = deliver(state, 5.0, [lease(2, gpus=1), lease(3)], stop=[1])
    assert started(out) == {3: ()}  # 2 waits: task 1's child still runs on GPU 0
    assert state.gpus_of((1, 1)) == (0,)
    state.finished(AttemptReport(task_id=1, attempt=1, outcome="failed", reason="killed"),
                   6.0)
    assert started(state.decide(6.0)) == {2: (0,)}


def test_a_task_needing_more_gpus_than_the_worker_has_goes_back() -> None:
    state = WorkerState(1, gpus=1)
    out = deliver(state, 0.0, [lease(1, gpus=2)])
    assert started(out) == {}
    assert state.reports[(1, 1)].outcome == "released"
    assert any("needs 2 GPU(s)" in note for note in state.notes)


def test_multi_gpu_tasks_never_share_a_gpu_under_random_traffic() -> None:
    rnd = random.Random(15)
    state = WorkerState(2, gpus=4)
    running: dict[int, tuple[int, ...]] = {}
    wide = 0  # tasks started on two GPUs or more
    next_id, now = 1, 0.0
    for _ in range(300):
        now += 4.0  # a heartbeat each round
        room = 4 - sum(len(g) for g in running.values())
        offer = []
        while room > 0 and rnd.random() < 0.7:
            need = rnd.choice([0, 1, 1, 2, 3])
            if need > room:
                break
            offer.append(lease(next_id, gpus=need))
            next_id += 1
            room -= need
        running.update(started(state.decide(now)))
        if state.in_flight:
            state.answered(state._flight.sync_id, answer(offer), now)  # type: ignore[union-attr]
        running.update(started(state.decide(now)))
        wide = max(wide, sum(len(g) >= 2 for g in running.values()))
        in_use = [g for gpus in running.values() for g in gpus]
        assert len(in_use) == len(set(in_use)) and all(0 <= g < 4 for g in in_use)
        assert sum(1 for g in running.values() if not g) <= 2  # CPU slots
        for task_id in [t for t in running if rnd.random() < 0.3]:
            state.finished(done(task_id), 0.1)
            del running[task_id]
    assert next_id > 100 and wide >= 1


# ---------------------------------------------------------------- what the child sees


def test_the_child_env_names_exactly_the_given_gpus() -> None:
    assert gpu_env((1, 3), {}) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                   "CUDA_VISIBLE_DEVICES": "1,3", "HIP_VISIBLE_DEVICES": "1,3"}
    cpu = gpu_env((), {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["HIP_VISIBLE_DEVICES"] == ""
    assert gpu_env(None, {"CUDA_VISIBLE_DEVICES": "0"}) == {}
    # a worker confined to cards 4 and 6: its GPU 1 is card 6
    env = with_gpus({"CUDA_VISIBLE_DEVICES": "4,6", "PATH": "/bin"}, (1,))
    assert env["CUDA_VISIBLE_DEVICES"] == "6" and env["HIP_VISIBLE_DEVICES"] == "1"
    assert env["PATH"] == "/bin"


CUDA = [RenderDevice(type="CUDA", name=f"RTX {n}", id=f"CUDA_RTX {n}_0000:0{n}:00")
        for n in range(3)]
OPTIX = [RenderDevice(type="OPTIX", name=d.name, id=d.id + "_OptiX") for d in CUDA]


def test_a_render_gets_the_cycles_ids_of_its_cards() -> None:
    devices = [*CUDA, *OPTIX[:1], *OPTIX[2:], RenderDevice(type="CPU", name="cpu")]
    optix = {"type": "OPTIX", "ids": [d.id for d in devices if d.type == "OPTIX"]}
    assert restrict_to_gpus(optix, devices, (2,)) == {
        "type": "OPTIX", "ids": [OPTIX[2].id], "env_narrowed": True}
    cuda = {"type": "CUDA", "ids": [d.id for d in CUDA]}
    assert restrict_to_gpus(cuda, CUDA, (0, 1))["ids"] == [CUDA[0].id, CUDA[1].id]
    # GPU 1 has no OptiX entry: the environment alone narrows it (the backend's cards)
    assert restrict_to_gpus(optix, devices, (1,)) == {**optix, "env_narrowed": True}
    # more GPUs than Cycles lists (told by hand): the environment alone
    assert restrict_to_gpus(cuda, CUDA, (5,)) == {**cuda, "env_narrowed": True}
    metal = {"type": "METAL", "ids": ["m"]}
    assert restrict_to_gpus(metal, [RenderDevice(type="METAL", name="M2", id="m")],
                            (0,)) == {**metal, "env_narrowed": False}


def test_a_render_given_no_gpu_renders_on_the_cpu() -> None:
    assert render_device("any", ()) == {"type": "CPU"}
    assert render_device("cpu", (0,)) == {"type": "CPU"}


def test_a_reused_child_serves_only_attempts_given_the_same_gpus(tmp_path: Path) -> None:
    def child_env(runner: WarmRunner) -> dict[str, str]:
        raw = Path(f"/proc/{runner.proc.pid}/environ").read_bytes().split(b"\0")
        return dict(item.decode().split("=", 1) for item in raw if b"=" in item)

    pool = RunnerPool()
    try:
        on_one = pool.take("job-7", False, tmp_path, (1,))
        assert child_env(on_one)["CUDA_VISIBLE_DEVICES"] == "1"
        pool.give_back(on_one)
        on_zero = pool.take("job-7", False, tmp_path, (0,))  # same job, other GPU: new child
        assert on_zero is not on_one and child_env(on_zero)["CUDA_VISIBLE_DEVICES"] == "0"
        pool.give_back(on_zero)
        assert pool.take("job-7", False, tmp_path, (1,)) is on_one
        cpu = pool.take("job-7", False, tmp_path, ())
        assert child_env(cpu)["CUDA_VISIBLE_DEVICES"] == ""
    finally:
        pool.close()
