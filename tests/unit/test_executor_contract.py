"""The ``concurrent.futures`` contract of the Executor, without sockets (a fake farm that
runs the calls through the real runner code): the first call of a burst is sent at once and
the calls made during a send go together into the next job; nothing submitted is kept
alive by the executor once its future is done; calls submitted just before the
interpreter exits are sent (a real child interpreter); ``submit`` from an exit handler
raises ``RuntimeError``; results pushed by a job's stream complete the futures."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parallel_pilot.client import executor as executor_module
from parallel_pilot.client.executor import Executor
from parallel_pilot.core.protocol import JobInfo, TaskInfo
from tests.unit.test_executor import FakeFarm, run_until

REPO = Path(__file__).resolve().parents[2]
WAIT = 10.0  # seconds a condition may take before the test fails


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class GatedFarm(FakeFarm):
    """A farm whose job submissions wait for ``gate`` (a send in flight, held open)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.sending = threading.Event()

    def submit_python(self, params: dict[str, Any], **options: Any) -> JobInfo:
        self.sending.set()
        assert self.gate.wait(WAIT)
        return super().submit_python(params, **options)


class StreamingFarm(FakeFarm):
    """A farm that pushes finished tasks through ``finished_tasks``, as the coordinator's
    stream does, and fails the test if the executor polls a job instead."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.polls = 0
        self.streams = 0

    def job(self, job_id: int) -> JobInfo:  # what a poll asks first
        self.polls += 1
        return super().job(job_id)

    def submit_python(self, params: dict[str, Any], **options: Any) -> JobInfo:
        info = super().submit_python(params, **options)
        self.polls -= 1  # its answer is the job: not a poll
        return info

    def finished_tasks(self, job_id: int, *, since: float | None = None,
                       seconds: float = 300.0) -> Iterator[tuple[str, Any]]:
        self.streams += 1
        sent: set[int] = set()
        yield "job", (FakeFarm.job(self, job_id).state, None)
        while True:
            with self.lock:
                finished = [TaskInfo.model_validate(t) for t in self.tasks_by_job[job_id]
                            if t["state"] in ("done", "cancelled") and t["id"] not in sent]
            if finished:
                sent.update(t.id for t in finished)
                yield "tasks", (finished, 0.0)
            if FakeFarm.job(self, job_id).state.finished:
                yield "done", None
                return
            time.sleep(0.005)


class Clock:
    """The executor's clock, standing still while ``frozen``: nothing the executor does
    then may wait for time to pass."""

    def __init__(self) -> None:
        self.frozen: float | None = None

    def monotonic(self) -> float:
        return time.monotonic() if self.frozen is None else self.frozen

    sleep = staticmethod(time.sleep)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(executor_module, "time", fake)
    return fake


def test_the_first_call_is_sent_at_once_and_calls_during_a_send_go_together(
        tmp_path: Path, clock: Clock) -> None:
    farm = GatedFarm(tmp_path)
    with Executor(client=farm) as pool:  # type: ignore[arg-type]
        clock.frozen = time.monotonic()
        first = pool.submit(abs, -1)
        sent = farm.sending.wait(WAIT)
        clock.frozen = None
        assert sent, "the first call was not sent at once"
        rest = [pool.submit(abs, -i) for i in range(2, 5)]  # while its send is in flight
        farm.gate.set()
        run_until(farm, [first, *rest])
        assert [f.result() for f in [first, *rest]] == [1, 2, 3, 4]
    assert [len(farm.jobs[j]["chunks"]) for j in sorted(farm.jobs)] == [1, 3]


class Model:
    def step(self, x: int) -> int:
        return x + 1


def test_submitted_functions_and_their_objects_are_not_kept_alive(tmp_path: Path) -> None:
    farm = FakeFarm(tmp_path)
    with Executor(client=farm) as pool:  # type: ignore[arg-type]
        model, closure_object = Model(), Model()
        model_ref, closure_ref = weakref.ref(model), weakref.ref(closure_object)

        def uses(x: int, held: Model = closure_object) -> int:
            return held.step(x)

        uses_ref = weakref.ref(uses)
        futures = [pool.submit(model.step, 1), pool.submit(uses, 2)]
        mapped = pool.map(model.step, range(3))
        run_until(farm, futures)
        farm.run_ready()
        assert [f.result() for f in futures] == [2, 3] and list(mapped) == [1, 2, 3]
        del model, closure_object, uses, mapped
        gc.collect()
        # the futures and the executor live on; what was submitted does not
        assert model_ref() is None and closure_ref() is None and uses_ref() is None
        assert futures[0].done()


def test_stream_results_complete_the_futures_without_polling(tmp_path: Path) -> None:
    farm = StreamingFarm(tmp_path)
    with Executor(client=farm) as pool:  # type: ignore[arg-type]
        futures = [pool.submit(pow, 3, i) for i in range(3)]
        mapped = pool.map(abs, [-1, -2, -3], chunksize=2)
        run_until(farm, futures)
        farm.run_ready()
        assert [f.result() for f in futures] == [1, 3, 9] and list(mapped) == [1, 2, 3]
    assert farm.streams >= 2 and farm.polls == 0


CHILD = """
import atexit, sys, threading, time
from pathlib import Path
sys.path.append({repo!r})  # for tests.unit; the package as installed
from parallel_pilot.client.executor import Executor
from tests.unit.test_executor import FakeFarm

out = Path({out!r})

class SlowFarm(FakeFarm):
    def submit_python(self, params, **options):
        time.sleep(0.3)  # a send still in flight when the main thread ends
        info = super().submit_python(params, **options)
        with open(out / "sent", "a") as f:
            f.write(f"{{len(params['chunks'])}}\\n")
        return info

pool = Executor(client=SlowFarm(out))

def late() -> None:
    try:
        pool.submit(abs, -9)
    except RuntimeError as exc:
        (out / "late").write_text(str(exc))

atexit.register(late)
{calls}
"""


def run_child(tmp_path: Path, calls: str) -> str:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), out=str(tmp_path),
                                   calls=textwrap.dedent(calls)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "sent").read_text() if (tmp_path / "sent").exists() else ""


def test_calls_submitted_just_before_exit_are_sent(tmp_path: Path) -> None:
    sent = run_child(tmp_path, """
        futures = [pool.submit(abs, -i) for i in range(3)]
    """)
    assert sum(int(n) for n in sent.split()) == 3, "calls were dropped at exit"
    assert "interpreter shutdown" in (tmp_path / "late").read_text()


def test_calls_submitted_before_shutdown_without_wait_are_sent(tmp_path: Path) -> None:
    sent = run_child(tmp_path, """
        futures = [pool.submit(abs, -i) for i in range(2)]
        pool.shutdown(wait=False)
        try:
            pool.submit(abs, 1)
        except RuntimeError as exc:
            (out / "after").write_text(str(exc))
    """)
    assert sum(int(n) for n in sent.split()) == 2, "calls were dropped at exit"
    assert "after shutdown" in (tmp_path / "after").read_text()
    assert "after shutdown" in (tmp_path / "late").read_text()
