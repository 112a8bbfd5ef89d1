"""Adaptive render chunks (issue 15) through the real API (the worker exchange, uploads,
outputs) on SQLite, PostgreSQL and MariaDB with a fake clock: the first frames leased are
spread over the range; a fast worker gets bigger chunks than a slow one once it finished
one; every frame is rendered and credited exactly once while several workers cut the
job's ranges at the same time; a worker that vanishes costs its own chunk only; a cut
attempt may report only its own frames."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from parallel_pilot.coordinator.services import leasing
from parallel_pilot.store.tables import jobs as jobs_table
from parallel_pilot.store.tables import tasks as tasks_table
from tests.integration.conftest import Coordinator
from tests.integration.test_sync import job, tasks_of

API = "/api/v1"
SCENE = b"BLENDER17-01v0500" + bytes(512)  # the header Blender 5.0 writes
STARTUP = 10.0  # simulated seconds a chunk takes before its first frame


def render_job(coord: Coordinator, frames: str, **params: Any) -> int:
    sha = hashlib.sha256(SCENE).hexdigest()
    r = coord.client.put(f"{API}/blobs/{sha}", headers=coord.user(), content=SCENE)
    assert r.status_code in (200, 201), r.text
    r = coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": "render", "params": {"scene": sha, "frames": frames, **params}})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def render_worker(coord: Coordinator, name: str) -> dict[str, str]:
    r = coord.client.post(f"{API}/workers/register", json={
        "join_token": coord.join_token, "name": name, "capabilities": {
            "cpu_cores": 4, "ram_bytes": 2**32, "kinds": ["render"],
            "blender_version": "5.0.1"}})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['worker_token']}"}


def take(coord: Coordinator, worker: dict[str, str]) -> dict[str, Any] | None:
    """One lease (or None) for the worker, through the exchange."""
    r = coord.client.post(f"{API}/workers/sync", headers=worker,
                          json={"free_slots": 1, "wait_seconds": 0})
    assert r.status_code == 200, r.text
    leases = r.json()["tasks"]
    assert len(leases) <= 1
    return leases[0] if leases else None


def render(coord: Coordinator, worker: dict[str, str], lease: dict[str, Any],
           frames: list[int] | None = None) -> None:
    """Upload each frame for the attempt and post it as an output, as a chunk does."""
    headers = {**worker, "X-Pilot-Attempt": f"{lease['task_id']}/{lease['attempt']}"}
    for frame in lease["payload"]["frames"] if frames is None else frames:
        data = f"frame {frame} task {lease['task_id']}/{lease['attempt']}".encode()
        sha = hashlib.sha256(data).hexdigest()
        r = coord.client.put(f"{API}/blobs/{sha}", headers=headers, content=data)
        assert r.status_code in (200, 201), r.text
        r = coord.client.post(f"{API}/attempts/{lease['task_id']}/{lease['attempt']}/outputs",
                              headers=worker, json={"path": f"frames/{frame:04d}.png",
                                                    "sha256": sha, "size": len(data)})
        assert r.status_code == 200, r.text


def report(coord: Coordinator, worker: dict[str, str], lease: dict[str, Any],
           free_slots: int = 0) -> dict[str, Any]:
    result = {"frames": {str(f): "x" for f in lease["payload"]["frames"]}}
    if lease["payload"]["role"] == "assemble":
        result = {"frames": len(lease["payload"]["frames"])}
    r = coord.client.post(f"{API}/workers/sync", headers=worker, json={
        "free_slots": free_slots, "wait_seconds": 0, "reports": [{
            "task_id": lease["task_id"], "attempt": lease["attempt"],
            "outcome": "completed", "result": result}]})
    assert r.status_code == 200, r.text
    assert r.json()["verdicts"][0]["accepted"], r.json()
    return dict(r.json())


def run_chunk(coord: Coordinator, worker: dict[str, str], seconds_per_frame: float,
              ) -> dict[str, Any] | None:
    """Take a task, render it for start-up + frames x seconds_per_frame of the fake clock,
    report it. Returns the lease (None: nothing to take)."""
    lease = take(coord, worker)
    if lease is None:
        return None
    if lease["payload"]["role"] == "chunk":
        render(coord, worker, lease)
        coord.clock.advance(STARTUP + seconds_per_frame * len(lease["payload"]["frames"]))
    report(coord, worker, lease)
    return lease


def frame_outputs(coord: Coordinator, job_id: int) -> Counter[int]:
    listed = coord.client.get(f"{API}/jobs/{job_id}/outputs", headers=coord.user()).json()
    return Counter(int(o["path"][7:11]) for o in listed["outputs"]
                   if o["path"].startswith("frames/"))


def test_the_first_frames_leased_are_spread_over_the_range(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = render_job(coord, "1-1200")
    workers = [render_worker(coord, f"w{i}") for i in range(24)]
    first = []
    for worker in workers:
        lease = take(coord, worker)
        assert lease is not None
        first.append(lease["payload"]["frames"])
    # one frame in each 1/24th of the range: a preview of the whole shot comes first
    assert all(len(frames) == 1 for frames in first)
    assert sorted((f[0] - 1) // 50 for f in first) == list(range(24))
    assert job(coord, job_id)["tasks_total"] == 49  # 24 spread frames, 24 ranges, assembly


def test_a_fast_worker_gets_bigger_chunks_than_a_slow_one(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = render_job(coord, "1-2400")
    fast, slow = render_worker(coord, "fast"), render_worker(coord, "slow")
    sizes: dict[str, list[int]] = {"fast": [], "slow": []}
    # the 24 spread frames, then ranges: each worker a chunk at a time, in turn
    while len(sizes["slow"]) < 16:
        for name, worker, pace in (("fast", fast, 5.0), ("slow", slow, 20.0)):
            lease = run_chunk(coord, worker, pace)
            assert lease is not None
            sizes[name].append(len(lease["payload"]["frames"]))
    fast_ranges = [n for n in sizes["fast"] if n > 1]
    slow_ranges = [n for n in sizes["slow"] if n > 1]
    assert fast_ranges and slow_ranges
    # after its first chunk each worker is measured: four times the speed, about four
    # times the frames for the same target time
    later = list(zip(sizes["fast"][13:], sizes["slow"][13:], strict=True))
    assert all(f > 2 * s for f, s in later), sizes
    target = coord.services.settings.chunk_seconds
    assert all(STARTUP + 20.0 * s <= target + 20.0 for s in sizes["slow"]), sizes
    tasks = tasks_of(coord, job_id)
    assert job(coord, job_id)["tasks_total"] == len(tasks)
    assert sorted(t["index"] for t in tasks) == list(range(len(tasks)))  # one numbering


def test_every_frame_is_rendered_once_with_concurrent_workers_cutting(
        coordinator: Coordinator) -> None:
    coord = coordinator
    # the cuts alone: once a chunk has run backup_min_seconds on the test's clock an idle
    # worker here may take a backup copy of it (tests/integration/test_stragglers.py covers
    # copies), and this helper runs every lease as an original
    coord.services.settings.backup_copies = False
    frames = 600
    job_id = render_job(coord, f"1-{frames}")
    workers = [render_worker(coord, f"w{i}") for i in range(6)]
    lock = threading.Lock()
    leases: list[dict[str, Any]] = []

    def work(i: int) -> None:
        idle = 0
        while idle < 3:
            lease = run_chunk(coord, workers[i], 1.0 + i)
            if lease is None:
                idle += 1
                continue
            idle = 0
            with lock:
                leases.append(lease)

    with ThreadPoolExecutor(len(workers)) as pool:
        for future in [pool.submit(work, i) for i in range(len(workers))]:
            future.result()
    while job(coord, job_id)["state"] != "completed":  # the assembly, if not taken yet
        assert run_chunk(coord, workers[0], 1.0) is not None, (
            job(coord, job_id), [(t["name"], t["state"]) for t in tasks_of(coord, job_id)
                                 if t["state"] != "done"])
    rendered = Counter(f for lease in leases if lease["payload"]["role"] == "chunk"
                       for f in lease["payload"]["frames"])
    assert rendered == Counter(range(1, frames + 1))  # each frame leased exactly once
    assert frame_outputs(coord, job_id) == Counter(range(1, frames + 1))
    tasks = tasks_of(coord, job_id)
    chunks = [t for t in tasks if t["name"] != "assemble video"]
    credited = Counter(int(f) for t in chunks for f in t["result"]["frames"])
    assert credited == Counter(range(1, frames + 1))
    assert len(chunks) > 48  # the ranges were cut
    info = job(coord, job_id)
    assert info["tasks_total"] == len(tasks) == info["tasks_done"]
    assert info["task_counts"] == {"done": len(tasks)}
    with coord.services.engine.connect() as conn:  # the counters agree with the rows
        row = conn.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id)).one()
        assert (row.count_done, row.count_ready, row.count_leased) == (len(tasks), 0, 0)
        deps = conn.execute(sa.text("SELECT COUNT(*) FROM task_deps")).scalar_one()
        assert deps == len(chunks)  # the assembly waited for every cut-off rest too


def test_a_vanished_worker_costs_its_own_chunk_only(coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = render_job(coord, "1-480")
    steady, doomed = render_worker(coord, "steady"), render_worker(coord, "doomed")
    while True:  # both measured on the job, then the doomed one takes a range and dies
        run_chunk(coord, steady, 5.0)
        lease = take(coord, doomed)
        assert lease is not None
        if len(lease["payload"]["frames"]) > 1:
            break
        render(coord, doomed, lease)
        coord.clock.advance(STARTUP + 5.0)
        report(coord, doomed, lease)
    held = lease["payload"]["frames"]
    render(coord, doomed, lease, held[:2])  # two frames made it before it vanished
    before = {t["id"]: t for t in tasks_of(coord, job_id)}
    coord.clock.advance(coord.services.settings.lease_seconds + 1)
    assert leasing.reap(coord.services) == 1
    after = {t["id"]: t for t in tasks_of(coord, job_id)}
    lost = after[lease["task_id"]]
    assert lost["state"] == "ready" and lost["failures"] == 0 and lost["losses"] == 1
    with coord.services.engine.connect() as conn:
        payload = conn.execute(sa.select(tasks_table.c.payload)
                               .where(tasks_table.c.id == lease["task_id"])).scalar_one()
    assert payload["frames"] == held  # requeued as it was leased: that chunk, no more
    assert set(after) == set(before)  # nothing else was cut or requeued
    changed = {i for i, t in after.items() if (t["state"], t["name"]) !=
               (before[i]["state"], before[i]["name"])}
    assert changed == {lease["task_id"]}
    # the lost frames are rendered again, each once in the end
    idle = 0
    while job(coord, job_id)["state"] != "completed" and idle < 3:
        idle = idle + 1 if run_chunk(coord, steady, 5.0) is None else 0
    assert job(coord, job_id)["state"] == "completed"
    assert frame_outputs(coord, job_id) == Counter(range(1, 481))


def test_a_cut_attempt_reports_only_its_own_frames(coordinator: Coordinator) -> None:
    coord = coordinator
    render_job(coord, "1-40")
    worker = render_worker(coord, "w")
    lease = None
    while lease is None or len(lease["payload"]["frames"]) < 2:
        if lease is not None:
            coord.clock.advance(STARTUP + 5.0)
            report(coord, worker, lease)
        lease = take(coord, worker)
        assert lease is not None
    mine = lease["payload"]["frames"]
    data = b"not my frame"
    sha = hashlib.sha256(data).hexdigest()
    headers = {**worker, "X-Pilot-Attempt": f"{lease['task_id']}/{lease['attempt']}"}
    assert coord.client.put(f"{API}/blobs/{sha}", headers=headers,
                            content=data).status_code in (200, 201)
    outside = max(mine) + 1
    r = coord.client.post(f"{API}/attempts/{lease['task_id']}/{lease['attempt']}/outputs",
                          headers=worker, json={"path": f"frames/{outside:04d}.png",
                                                "sha256": sha, "size": len(data)})
    assert r.status_code == 400 and r.json()["error"] == "output_not_uploaded", r.text
    assert "is not one of" in r.json()["message"]
    render(coord, worker, lease)  # its own frames are taken
