"""``parallel_pilot.Executor`` against a real coordinator and real worker processes:
``map`` equals the builtin ``map``, remote exceptions keep their type, cancelled futures
cancel their tasks, a killed worker loses no result, a missing module is named."""

from __future__ import annotations

import json
import platform
import signal
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from parallel_pilot import Client, Executor
from parallel_pilot.client.python_calls import TaskFailed
from parallel_pilot.kinds.sandbox import sandbox_unavailable_reason
from tests.conftest import require
from tests.e2e.farm import Farm, wait_for

ALLOW_PYTHON = ["--allow", "python"]


@pytest.fixture(scope="module")
def shared_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(tmp_path_factory.mktemp("executor-farm"))
    try:
        farm.start_server()
        for name in ("w1", "w2"):
            farm.start_worker(name, extra=ALLOW_PYTHON)
        sandboxed = sandbox_unavailable_reason() is None
        if sandboxed:
            farm.start_worker("sandboxed", extra=[*ALLOW_PYTHON, "--sandbox"])
        farm.wait_workers_joined(3 if sandboxed else 2)
        if sandboxed:  # its sandbox is its claim until an admin vouches for it
            [boxed] = [w["id"] for w in farm.api("GET", "/workers")["workers"]
                       if w["name"] == "sandboxed"]
            farm.pilot("workers", "trust", str(boxed))
        yield farm
    finally:
        farm.stop()


def executor(farm: Farm, **options: object) -> Executor:
    return Executor(client=Client(farm.url, farm.admin_token), **options)  # type: ignore[arg-type]


def latest_job(farm: Farm) -> dict:
    return farm.api("GET", "/jobs", params={"limit": 1})["jobs"][0]


def test_map_over_500_items_equals_the_builtin_map(shared_farm: Farm) -> None:
    offset = 7

    def f(x: int, y: int) -> tuple[int, int]:  # a closure over `offset`
        return (x * y + offset, x - y)

    xs, ys = range(500), range(1000, 1500)
    with executor(shared_farm) as pool:
        assert list(pool.map(f, xs, ys, chunksize=25)) == list(map(f, xs, ys))
        assert list(pool.map(lambda s: s.upper(), ["a", "b"])) == ["A", "B"]
        assert pool.submit(lambda *a, **k: (a, k), 1, z=2).result(60) == ((1,), {"z": 2})
    job = latest_job(shared_farm)
    assert job["kind"] == "python" and job["state"] == "completed"
    # the client's Python is in the job, the worker's in each task's result
    here = platform.python_version()
    assert job["params"]["python"] == here.rsplit(".", 1)[0]
    assert {t["result"]["python"] for t in shared_farm.tasks(job["id"])} == {here}


def test_small_calls_travel_in_the_job_and_large_ones_as_a_blob(shared_farm: Farm) -> None:
    """Up to INLINE_CALLS_BYTES a job carries its calls (no calls blob to upload, and each
    task is leased with its own chunk); more go as a calls blob the workers download."""
    words = [str(i % 10) * 2000 for i in range(40)]  # about 80 KB of calls
    with executor(shared_farm) as pool:
        assert pool.submit(len, "x" * 10).result(60) == 10
        small = latest_job(shared_farm)
        assert list(pool.map(len, words, chunksize=8)) == [2000] * len(words)
        large = latest_job(shared_farm)
    assert small["params"]["calls_data"] and small["params"]["calls"] is None
    assert large["params"]["calls"] and large["params"]["calls_data"] is None
    assert small["state"] == large["state"] == "completed"


def test_an_executor_reuses_worker_processes_across_its_jobs(shared_farm: Farm) -> None:
    def process_token(_: int) -> str:  # one random token per worker child process
        import builtins
        import uuid

        return builtins.__dict__.setdefault("_pilot_test_token", uuid.uuid4().hex)

    workers = len(shared_farm.workers)  # one slot each
    with executor(shared_farm) as pool:
        first = set(pool.map(process_token, range(12)))
        second = set(pool.map(process_token, range(12)))  # another job, same session
    assert len(first | second) <= workers
    with executor(shared_farm) as other:  # another client never shares a child
        assert not set(other.map(process_token, range(12))) & (first | second)


def test_remote_exceptions_keep_their_type_and_traceback(shared_farm: Farm) -> None:
    def parse(text: str) -> object:
        return json.loads(text)

    with executor(shared_farm) as pool:
        bad = pool.submit(parse, "{not json")
        zero = pool.submit(lambda: 1 / 0)
        with pytest.raises(json.JSONDecodeError) as caught:
            bad.result(60)
        assert "Remote traceback" in str(caught.value) and "in parse" in str(caught.value)
        with pytest.raises(ZeroDivisionError):
            zero.result(60)
        # in map, values before the failing item arrive, then its exception
        results = pool.map(lambda x: 10 // (x - 3), range(6), chunksize=2)
        assert [next(results) for _ in range(3)] == [-4, -5, -10]
        with pytest.raises(ZeroDivisionError):
            next(results)


def test_a_missing_module_fails_the_task_naming_it(shared_farm: Farm) -> None:
    with executor(shared_farm, requirements=("json", "no_such_module_for_pilot")) as pool:
        future = pool.submit(lambda: 1)
        with pytest.raises(TaskFailed, match="no_such_module_for_pilot"):
            future.result(60)
    job = latest_job(shared_farm)
    assert job["state"] == "failed" and "no_such_module_for_pilot" in job["error"]


def test_cancelling_futures_cancels_their_tasks(shared_farm: Farm) -> None:
    before = max((j["id"] for j in shared_farm.api("GET", "/jobs", params={"limit": 1})["jobs"]),
                 default=0)
    with executor(shared_farm) as pool:
        # the first call is sent at once and the rest together: one or more jobs
        futures = [pool.submit(time.sleep, 120) for _ in range(5)]

        def sleep_jobs() -> list[int]:
            jobs = shared_farm.api("GET", "/jobs", params={"limit": 20})["jobs"]
            return sorted(j["id"] for j in jobs if j["id"] > before)

        def sleep_tasks() -> list[dict]:
            return [t for j in sleep_jobs() for t in shared_farm.tasks(j)]
        wait_for(lambda: len(sleep_tasks()) == 5 and any(
            t["state"] == "leased" for t in sleep_tasks()), 60, "a sleeping call to start")
        job_ids = sleep_jobs()
        keep = pool.submit(lambda: "still works")
        assert all(f.cancel() for f in futures)
        with pytest.raises(CancelledError):
            futures[0].result()
        assert keep.result(60) == "still works"

        def all_cancelled() -> bool:
            states = [t["state"] for j in job_ids for t in shared_farm.tasks(j)]
            return states == ["cancelled"] * 5
        wait_for(all_cancelled, 30, "the five tasks to be cancelled on the coordinator")
        wait_for(lambda: all(shared_farm.job(j)["state"] == "cancelled" for j in job_ids), 30,
                 "the jobs to end cancelled")
        # the running calls were stopped: both workers take new work at once
        started = time.monotonic()
        assert list(pool.map(abs, [-1, -2], chunksize=1)) == [1, 2]
        assert time.monotonic() - started < 30


def test_sandboxed_calls_have_no_network_and_no_view_of_the_host(shared_farm: Farm) -> None:
    require(sandbox_unavailable_reason())
    port = int(shared_farm.url.rsplit(":", 1)[1])
    probe_file = shared_farm.root / "written-from-a-sandbox.txt"

    def probe(port: int, path: str) -> tuple[str, str]:
        import socket

        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            net = "connected"
        except OSError as exc:
            net = type(exc).__name__
        with open(path, "w") as f:  # /tmp is the sandbox's own
            f.write("x")
        return net, __import__("os").getcwd()

    with executor(shared_farm, require_sandbox=True) as pool:
        net, cwd = pool.submit(probe, port, str(probe_file)).result(60)
    assert net != "connected"
    assert "sandboxed" in str(cwd) and not probe_file.exists()
    tasks = shared_farm.tasks(latest_job(shared_farm)["id"])
    assert shared_farm.job(tasks[0]["job_id"])["state"] == "completed"


def test_a_worker_killed_mid_task_loses_no_result(tmp_path: Path) -> None:
    farm = Farm(tmp_path)
    try:
        farm.start_server()
        for name in ("w1", "w2"):
            farm.start_worker(name, extra=ALLOW_PYTHON)
        farm.wait_workers_joined(2)
        with executor(farm) as pool:
            def slow_square(x: int) -> int:
                time.sleep(0.5)
                return x * x

            futures = [pool.submit(slow_square, i) for i in range(12)]
            job_id = wait_for(lambda: farm.api("GET", "/jobs")["jobs"][0]["id"]
                              if farm.api("GET", "/jobs")["jobs"] else None, 30, "the job")
            wait_for(lambda: any(t["worker"] == "w2" and t["state"] == "leased"
                                 for t in farm.tasks(job_id)), 60, "w2 to hold a task")
            farm.workers["w2"].send_signal(signal.SIGKILL)
            farm.workers["w2"].wait(10)
            assert [f.result(120) for f in futures] == [i * i for i in range(12)]
        assert any(t["attempt"] >= 2 for t in farm.tasks(job_id)), "nothing was retried"
    finally:
        farm.stop()
