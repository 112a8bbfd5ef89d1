"""The Executor's own logic without sockets: a fake farm client runs the calls in this
process through the real runner code. Batching of ``submit``, ``map`` order and chunking,
cancel before and after submission, ``shutdown(cancel_futures=True)``, a failed job, and
the public surface (a real ``concurrent.futures.Executor``, documented)."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import inspect
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import parallel_pilot
from parallel_pilot.client import executor as executor_module
from parallel_pilot.client.executor import Executor
from parallel_pilot.client.python_calls import TaskFailed
from parallel_pilot.core.protocol import JobInfo, TaskCancelled, TaskInfo, WorkerInfo
from parallel_pilot.core.python_calls import INLINE_CALLS_BYTES
from parallel_pilot.kinds.python import calls as fmt
from parallel_pilot.kinds.python.runner import _Loader, run_task


class FakeFarm:
    """The Client methods the Executor uses; ``run_ready`` plays the workers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs: dict[str, bytes] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.tasks_by_job: dict[int, list[dict[str, Any]]] = {}
        self.cancelled: list[int] = []
        self.fail_job: str | None = None
        self.lock = threading.Lock()
        self.server = "http://farm.invalid"
        self.worker_kinds = ["python"]

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo.model_validate({
            "id": 1, "name": "w1", "state": "idle", "current_tasks": [], "tasks_done": 0,
            "last_seen": 0, "created_at": 0,
            "capabilities": {"cpu_cores": 1, "ram_bytes": 1, "kinds": self.worker_kinds}})]

    def upload_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def download_bytes(self, sha: str) -> bytes:
        return self.blobs[sha]

    def submit_python(self, params: dict[str, Any], **_: Any) -> JobInfo:
        with self.lock:
            job_id = len(self.jobs) + 1
            self.jobs[job_id] = params
            first = 100 * job_id
            self.tasks_by_job[job_id] = [
                {"id": first + i, "job_id": job_id, "index": i, "name": f"chunk {i}",
                 "kind": "python", "state": "ready", "attempt": 0, "failures": 0,
                 "worker": None, "progress": None, "message": None, "error": None,
                 "result": None, "started_at": None, "finished_at": None}
                for i in range(len(params["chunks"]))]
        return self.job(job_id)

    def job(self, job_id: int) -> JobInfo:
        with self.lock:
            tasks = self.tasks_by_job[job_id]
            counts: dict[str, int] = {}
            for t in tasks:
                counts[t["state"]] = counts.get(t["state"], 0) + 1
            state = "failed" if self.fail_job else "completed" if all(
                t["state"] in ("done", "cancelled") for t in tasks) else "running"
        return JobInfo.model_validate({
            "id": job_id, "name": "j", "kind": "python", "state": state, "owner": "me",
            "priority": 0, "params": {}, "created_at": 0, "started_at": None,
            "finished_at": None, "error": self.fail_job, "tasks_total": len(tasks),
            "tasks_done": counts.get("done", 0), "task_counts": counts, "progress": 0,
            "active_workers": 0, "eta_seconds": None})

    def tasks(self, job_id: int) -> list[TaskInfo]:
        with self.lock:
            return [TaskInfo.model_validate(t) for t in self.tasks_by_job[job_id]]

    def cancel_tasks(self, job_id: int, task_ids: list[int]) -> TaskCancelled:
        with self.lock:
            for t in self.tasks_by_job[job_id]:
                if t["id"] in task_ids and t["state"] == "ready":
                    t["state"] = "cancelled"
                    self.cancelled.append(t["id"])
        return TaskCancelled(cancelled=task_ids, job=self.job(job_id))

    def run_ready(self) -> int:
        """Run every ready task through the real runner; returns how many ran."""
        ran = 0
        for job_id, params in list(self.jobs.items()):
            calls_blob = self.blobs[params["calls"]] if "calls" in params \
                else base64.b64decode(params["calls_data"])
            for task, chunk in zip(self.tasks_by_job[job_id], params["chunks"], strict=True):
                if task["state"] != "ready":
                    continue
                task_dir = self.root / str(task["id"])
                (task_dir / fmt.BLOBS_DIR).mkdir(parents=True)
                (task_dir / fmt.FUNCTION_FILE).write_bytes(
                    self.blobs[params["functions"][chunk["function"]]])
                (task_dir / fmt.CALLS_FILE).write_bytes(
                    calls_blob[chunk["offset"]:chunk["offset"] + chunk["length"]])
                for b in chunk["blobs"]:
                    sha = params["shared"][b]
                    (task_dir / fmt.BLOBS_DIR / sha).write_bytes(self.blobs[sha])
                assert run_task(task_dir, _Loader(task_dir)) == 0
                results = (task_dir / fmt.RESULTS_FILE).read_bytes()
                with self.lock:
                    task["state"] = "done"
                    task["result"] = {"results_blob": self.upload_bytes(results)}
                ran += 1
        return ran

    def close(self) -> None:
        pass


@pytest.fixture
def farm(tmp_path: Path) -> FakeFarm:
    return FakeFarm(tmp_path)


def executor(farm: FakeFarm, **options: Any) -> Executor:
    return Executor(client=farm, poll_max=0.05, **options)  # type: ignore[arg-type]


def run_until(farm: FakeFarm, futures: list[concurrent.futures.Future[Any]]) -> None:
    deadline = time.monotonic() + 10
    while not all(f.done() for f in futures):
        farm.run_ready()
        assert time.monotonic() < deadline, "futures did not complete"
        time.sleep(0.01)


def test_submits_close_together_share_one_job(farm: FakeFarm) -> None:
    with executor(farm, batch_seconds=0.2) as pool:
        futures = [pool.submit(pow, 2, i) for i in range(5)]
        run_until(farm, futures)
        assert [f.result() for f in futures] == [1, 2, 4, 8, 16]
    assert len(farm.jobs) == 1 and len(farm.jobs[1]["chunks"]) == 5


def test_small_calls_travel_in_the_job_and_large_ones_as_a_blob(farm: FakeFarm) -> None:
    """Calls of up to INLINE_CALLS_BYTES go in the job's parameters (no upload, nothing
    for a worker to download); more go as one calls blob, with the same results."""
    big = [str(i % 10) * 1000 for i in range(60)]  # about 60 KB of calls in one chunk
    with executor(farm) as pool:
        small = pool.submit(len, "x" * 100)
        run_until(farm, [small])
        assert small.result() == 100
        threading.Thread(target=lambda: run_until_jobs(farm, 2), daemon=True).start()
        assert list(pool.map(len, big, chunksize=len(big))) == [1000] * len(big)
    inline, blobbed = farm.jobs[1], farm.jobs[2]
    calls = base64.b64decode(inline["calls_data"])
    assert "calls" not in inline and 0 < len(calls) <= INLINE_CALLS_BYTES
    assert hashlib.sha256(calls).hexdigest() not in farm.blobs  # never uploaded
    assert "calls_data" not in blobbed
    assert len(farm.blobs[blobbed["calls"]]) > INLINE_CALLS_BYTES


def test_map_chunks_and_keeps_order(farm: FakeFarm) -> None:
    with executor(farm) as pool:
        threading.Thread(target=lambda: run_until_jobs(farm, 1), daemon=True).start()
        assert list(pool.map(lambda a, b: a - b, range(10), range(10, 0, -1), chunksize=4)) \
            == [a - b for a, b in zip(range(10), range(10, 0, -1), strict=True)]
    assert [c["count"] for c in farm.jobs[1]["chunks"]] == [4, 4, 2]


def run_until_jobs(farm: FakeFarm, jobs: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(farm.jobs) >= jobs and farm.run_ready() == 0:
            return
        time.sleep(0.01)


def test_a_future_cancelled_before_its_batch_is_sent_never_runs(farm: FakeFarm) -> None:
    with executor(farm, batch_seconds=0.3) as pool:
        dropped = pool.submit(abs, -1)
        kept = pool.submit(abs, -2)
        assert dropped.cancel()
        run_until(farm, [kept])
        assert kept.result() == 2
    assert len(farm.jobs[1]["chunks"]) == 1 and farm.cancelled == []


def test_a_future_cancelled_after_submission_cancels_its_task(farm: FakeFarm) -> None:
    pool = executor(farm, batch_seconds=0.0)
    futures = [pool.submit(abs, -i) for i in range(3)]
    deadline = time.monotonic() + 10
    # wait until every call is submitted and its task id known
    while sum(len(job.open) for job in list(pool._jobs.values())) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pool.shutdown(wait=False, cancel_futures=True)
    submitted = sorted(t["id"] for tasks in farm.tasks_by_job.values() for t in tasks)
    assert len(submitted) == 3
    deadline = time.monotonic() + 10
    while sorted(farm.cancelled) != submitted:
        assert time.monotonic() < deadline, farm.cancelled
        time.sleep(0.01)
    assert all(f.cancelled() for f in futures)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(abs, 1)


def test_a_failed_job_fails_its_futures_with_the_reason(farm: FakeFarm) -> None:
    farm.fail_job = "task 0 failed (not retryable): no module named 'nope'"
    with executor(farm) as pool:
        future = pool.submit(abs, 1)
        with pytest.raises(TaskFailed, match="nope"):
            future.result(10)


def test_a_farm_without_python_workers_is_warned_about(farm: FakeFarm,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    farm.worker_kinds = ["render"]
    monkeypatch.setattr(executor_module, "WARN_AFTER", 0.0)
    with executor(farm) as pool, pytest.warns(RuntimeWarning, match="--allow python"):
        future = pool.submit(abs, -3)
        deadline = time.monotonic() + 10
        while not pool._workers_checked:  # the waiting job made it look at the workers
            assert time.monotonic() < deadline
            time.sleep(0.01)
        run_until(farm, [future])
    assert future.result() == 3


def test_public_surface_is_documented() -> None:
    assert issubclass(parallel_pilot.Executor, concurrent.futures.Executor)
    assert {"Client", "Executor"} <= set(parallel_pilot.__all__)
    for cls in (parallel_pilot.Client, parallel_pilot.Executor):
        for name, member in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_"):
                assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"
