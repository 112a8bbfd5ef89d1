"""Leftovers and races at the edges, tried with real processes.

- A worker SIGKILLed while it runs a sweep command that started a grandchild
  (``sh -c 'sleep … & sleep …'``) and a python task leaves nothing behind (checked in the
  process table), and each task runs once at a time: its retry on another worker starts
  only after every process of the first attempt is gone. The next worker on the same work
  folder removes the killed one's task folders.
- 50 wrong passwords for one account sent at the same moment: at most the limit are
  checked, the others get 429; a forged X-Forwarded-For does not buy more tries.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from parallel_pilot.client.executor import Executor
from parallel_pilot.client.local_cluster import LocalCluster
from parallel_pilot.core.settings import DEFAULT_LOGIN_MAX_FAILURES
from parallel_pilot.kinds.sandbox import sandbox_unavailable_reason
from tests.adversarial.conftest import API, Coordinator

LEASE_SECONDS = 4  # a killed worker's tasks go back to the queue this long after its death
GONE_SECONDS = 10.0  # a killed worker's processes must all be gone within this
RUN_SECONDS = 90.0  # the retried tasks must be done within this
SLEEP = "313"  # seconds the first attempt sleeps: a number no other process uses here
CONCURRENT_LOGINS = 50


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (one left to an init that does not reap counts as gone)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _name(proc: psutil.Process) -> str:
    """The process's name, or "" once it is gone (short-lived processes come and go while
    the tree is read)."""
    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return f"(pid {proc.pid}, gone)"


def _wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def _starts(marks: Path) -> list[tuple[int, float]]:
    """(pid, time) of each ``start PID TIME`` line a task wrote."""
    if not marks.exists():
        return []
    return [(int(p[1]), float(p[2])) for p in
            (line.split() for line in marks.read_text().splitlines()) if p[0] == "start"]


def _ends(marks: Path) -> list[int]:
    return [int(line.split()[1]) for line in marks.read_text().splitlines()
            if line.startswith("end ")]


# the sweep command: the first attempt starts a grandchild and sleeps; a retry ends at once
SWEEP_SCRIPT = (
    'echo "start $$ $(date +%s.%N)" >> "$0"; '
    'if [ "$(grep -c ^start "$0")" = 1 ]; then sleep ' + SLEEP + ' & sleep ' + SLEEP + '; fi; '
    'echo "end $$" >> "$0"'
)


def _python_task_function() -> Callable[[str, float], int]:
    """The python task, defined here so that it travels by value (cloudpickle), not as an
    import of this test module: the first attempt sleeps, a retry ends at once."""

    def _python_task(marks: str, sleep: float) -> int:
        import os
        import time

        with open(marks, "a") as f:
            f.write(f"start {os.getpid()} {time.time()}\n")
        with open(marks) as f:
            first = sum(line.startswith("start") for line in f) == 1
        if first:
            time.sleep(sleep)
        with open(marks, "a") as f:
            f.write(f"end {os.getpid()}\n")
        return os.getpid()

    return _python_task


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def farm(request: pytest.FixtureRequest, tmp_path: Path,
         fresh_database: Callable[..., str]) -> Iterator[LocalCluster]:
    url = fresh_database(request.param, migrated=True)
    cluster = LocalCluster(tmp_path / "data", workers=0, allow=("sweep", "python"),
                           server_args=["--database-url", url,
                                        "--lease-seconds", str(LEASE_SECONDS),
                                        "--heartbeat-seconds", "1"],
                           env={"PILOT_TOKEN": ""})
    cluster.start_server()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_a_killed_worker_leaves_no_process_and_its_tasks_run_once_at_a_time(
        farm: LocalCluster, tmp_path: Path) -> None:
    client = farm.client()
    work = tmp_path / "work"  # shared by the killed worker and the next one
    sweep_marks, python_marks = tmp_path / "sweep.marks", tmp_path / "python.marks"
    first = farm.add_worker("first", slots=2, extra_args=["--work-dir", str(work)])
    sweep = client.submit_sweep(["sh", "-c", SWEEP_SCRIPT, str(sweep_marks)], ["1"])
    executor = Executor(client=farm.client(), batch_seconds=0)
    future = executor.submit(_python_task_function(), str(python_marks), float(SLEEP))
    try:
        _wait_for(lambda: _starts(sweep_marks) and _starts(python_marks), RUN_SECONDS,
                  "both tasks started on the first worker")
        worker = psutil.Process(first.pid)
        started = _wait_for(
            lambda: [p for p in worker.children(recursive=True)
                     if _name(p) == "sleep"] and worker.children(recursive=True),
            GONE_SECONDS, "the sweep command's sleeps started")
        names = [_cmd(p) for p in started]
        assert sum(n == f"sleep {SLEEP}" for n in names) == 2, names  # child and grandchild
        assert any("runner.py --serve" in n for n in names), names  # the python child
        assert any("guard.py" in n for n in names), names
        task_folders = list(work.glob("pilot-worker-*"))
        assert len(task_folders) == 1

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.time()
        _wait_for(lambda: not any(_alive(p) for p in started), GONE_SECONDS,
                  "every process the killed worker started is gone: "
                  + ", ".join(_cmd(p) for p in started if _alive(p)))
        gone_at = time.time()
        strays = [p for p in psutil.process_iter(["cmdline"])
                  if p.info["cmdline"] and str(tmp_path) in " ".join(p.info["cmdline"])
                  and p.pid != farm.server.pid and _alive(p)]  # type: ignore[union-attr]
        strays += [p for p in psutil.process_iter(["cmdline"])
                   if p.info["cmdline"] == ["sleep", SLEEP] and _alive(p)]
        assert not strays, [p.info["cmdline"] for p in strays]
        assert task_folders[0].exists()  # left behind by the kill...

        farm.add_worker("second", slots=2, extra_args=["--work-dir", str(work)])
        assert future.result(timeout=RUN_SECONDS) > 0
        done = client.wait(sweep.id, timeout=RUN_SECONDS)
        assert done.state == "completed", done
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    # ...and removed by the next worker on the same work folder, which has its own
    assert not task_folders[0].exists()
    assert [p.name for p in work.glob("pilot-worker-*")] != []
    for marks in (sweep_marks, python_marks):
        starts = _starts(marks)
        assert len(starts) == 2, marks.read_text()  # the first attempt, its one retry
        (old_pid, _), (new_pid, retried_at) = starts
        assert _ends(marks) == [new_pid], marks.read_text()  # the first never finished
        # the retry started after the first attempt's processes were all seen gone
        assert retried_at > gone_at, (marks.name, retried_at - killed_at, gone_at - killed_at)


def test_a_killed_sandboxed_worker_leaves_no_process(farm: LocalCluster,
                                                     requirement: Callable[[str | None], None]
                                                     ) -> None:
    """With --sandbox the command runs in bwrap (a PID namespace and session of its own):
    bwrap dies with the worker and takes everything in its namespace along."""
    requirement(sandbox_unavailable_reason())
    client = farm.client()
    worker = farm.add_worker("boxed", extra_args=["--sandbox"])
    client.submit_sweep(["sh", "-c", f"sleep {SLEEP} & sleep {SLEEP}"], ["1"])
    started = _wait_for(
        lambda: (lambda below: below if sum(_name(p) == "sleep" for p in below) == 2 else [])(
            psutil.Process(worker.pid).children(recursive=True)),
        RUN_SECONDS, "the sandboxed sleeps started")
    assert any(_name(p) == "bwrap" for p in started), [_cmd(p) for p in started]
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    _wait_for(lambda: not any(_alive(p) for p in started), GONE_SECONDS,
              "every process the killed sandboxed worker started is gone: "
              + ", ".join(_cmd(p) for p in started if _alive(p)))


def test_a_stopped_worker_leaves_no_process(farm: LocalCluster, tmp_path: Path) -> None:
    """A worker stopped with SIGTERM ends its tasks' processes and grandchildren too."""
    client = farm.client()
    marks = tmp_path / "sweep.marks"
    worker = farm.add_worker("w", extra_args=["--drain-seconds", "0"])
    client.submit_sweep(["sh", "-c", SWEEP_SCRIPT, str(marks)], ["1"])
    _wait_for(lambda: _starts(marks), RUN_SECONDS, "the task started")
    started = _wait_for(lambda: [p for p in psutil.Process(worker.pid).children(recursive=True)
                                 if _name(p) == "sleep"] and
                        psutil.Process(worker.pid).children(recursive=True),
                        GONE_SECONDS, "the sleeps started")
    farm.stop_worker(worker)
    _wait_for(lambda: not any(_alive(p) for p in started), GONE_SECONDS,
              "every process the stopped worker started is gone")


def test_concurrent_wrong_passwords_get_at_most_the_limit_of_tries(
        coordinator: Coordinator) -> None:
    coordinator.admin.ok("POST", "/users", json={"name": "alice", "password": "right one!"})
    barrier = threading.Barrier(CONCURRENT_LOGINS)
    codes: list[int] = []
    lock = threading.Lock()

    def attempt(n: int) -> None:
        with httpx.Client(base_url=coordinator.url + API, timeout=60) as http:
            barrier.wait()
            status = http.post("/session", json={"name": "alice",
                                                 "password": f"wrong {n}"}).status_code
        with lock:
            codes.append(status)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(CONCURRENT_LOGINS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(codes) == CONCURRENT_LOGINS
    assert set(codes) <= {401, 429}, codes
    tried = codes.count(401)
    assert 1 <= tried <= DEFAULT_LOGIN_MAX_FAILURES, codes
    # the right password now waits out the window too: the guesses used it up
    r = httpx.post(f"{coordinator.url}{API}/session",
                   json={"name": "alice", "password": "right one!"}, timeout=30)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_a_forged_forwarded_for_buys_no_tries(coordinator: Coordinator) -> None:
    """No proxy is configured: X-Forwarded-For is the caller's word and is ignored."""
    coordinator.admin.ok("POST", "/users", json={"name": "bob", "password": "right one!"})
    codes = [httpx.post(f"{coordinator.url}{API}/session",
                        json={"name": "bob", "password": "wrong"}, timeout=30,
                        headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code
             for n in range(DEFAULT_LOGIN_MAX_FAILURES + 3)]
    assert codes == [401] * DEFAULT_LOGIN_MAX_FAILURES + [429] * 3
