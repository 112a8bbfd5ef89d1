"""The worker agent against the package's fake coordinator (``httpx.MockTransport``, no
sockets): register, syncs carrying results, stops, shutdown, leases answered after a stop,
lost answers, an absent coordinator, slots and prefetch."""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import BaseModel

from parallel_pilot import kinds
from parallel_pilot.client.fake_coordinator import FAKE_WORKER_TOKEN, FakeCoordinator
from parallel_pilot.core.protocol import Capabilities, TaskLease
from parallel_pilot.core.settings import WorkerSettings
from parallel_pilot.errors import InvalidInput
from parallel_pilot.http import Connection
from parallel_pilot.kinds.base import RunContext
from parallel_pilot.worker import agent
from parallel_pilot.worker.agent import Worker, run_worker

WAIT = 5.0  # seconds a test waits for a condition at most


class BoomKind:
    """A kind whose tasks raise what their payload says."""

    name: ClassVar[str] = "boom"
    params_model: ClassVar[type[BaseModel]] = BaseModel
    in_process: ClassVar[bool] = True

    def input_blobs(self, params: BaseModel) -> dict[str, str]:
        return {}

    def plan(self, params: BaseModel) -> list[Any]:
        return []

    def run(self, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
        ctx.log("about to fail")
        if task.payload.get("invalid"):
            raise InvalidInput("frame range 9-1 is backwards")
        raise RuntimeError("kaboom")

    def finalize(self, params: BaseModel, tasks: list[Any]) -> dict[str, bytes]:
        return {}


class CountKind(BoomKind):
    """Counts how many of its tasks run at once; each waits until ``release`` is set."""

    name: ClassVar[str] = "count"
    release = threading.Event()
    lock = threading.Lock()
    now = 0
    most = 0

    def run(self, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
        cls = type(self)
        with cls.lock:
            cls.now += 1
            cls.most = max(cls.most, cls.now)
        cls.release.wait(WAIT)
        with cls.lock:
            cls.now -= 1
        return {}


@pytest.fixture
def coordinator() -> Iterator[FakeCoordinator]:
    fake = FakeCoordinator()
    yield fake
    fake.closed.set()


@pytest.fixture
def make_worker(coordinator: FakeCoordinator, tmp_path: Path):
    def make(handler: Callable[[httpx.Request], httpx.Response] = coordinator.handle,
             **overrides: Any) -> Worker:
        options: dict[str, Any] = {
            "server": "http://coordinator.test", "join_token": "join", "name": "w1",
            "allow": ["sleep"], "cache_dir": tmp_path / "cache", "work_dir": tmp_path / "work",
            "drain_seconds": 0.0, **overrides}
        return Worker(
            WorkerSettings(**options),
            connection_factory=lambda server: Connection(
                server, transport=httpx.MockTransport(handler), retry_seconds=0),
            capabilities=Capabilities(cpu_cores=1, ram_bytes=0, kinds=options["allow"],
                                      slots=options.get("slots", 1)),
        )

    return make


def start(worker: Worker) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
    thread.start()
    return thread, codes


def stop(worker: Worker, thread: threading.Thread, codes: list[int]) -> int:
    worker.request_stop()
    thread.join(WAIT)
    assert not thread.is_alive(), "the worker did not stop in time"
    return codes[0]


def outcomes(fake: FakeCoordinator, task_id: int) -> list[str]:
    return [r.outcome for r in fake.results.get(task_id, [])]


def test_runs_a_sleep_task_and_reports_it_in_a_sync(coordinator: FakeCoordinator,
                                                    make_worker) -> None:
    coordinator.add_lease(17, "sleep", {"milliseconds": 250})
    worker = make_worker()
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: outcomes(coordinator, 17) == ["completed"], WAIT)
    paths = [r.path for r in coordinator.requests]
    assert paths[0] == "/workers/register" and set(paths[1:]) == {"/workers/sync"}
    register = coordinator.requests[0].body
    assert register["join_token"] == "join" and register["name"] == "w1"
    result = coordinator.results[17][0].result
    assert result is not None and result["slept_ms"] == 250 and result["stopped"] is False
    # the task was listed as held while it ran (the heartbeat is the sync itself)
    assert any(ref.task_id == 17 for s in coordinator.syncs() for ref in s.held)
    assert stop(worker, thread, codes) == 0
    # the last exchange leaves (an idle long poll given up on may still be on its way)
    assert [s for s in coordinator.syncs() if not s.wait_seconds][-1].leaving
    assert coordinator.left
    assert worker.outcomes["completed"] == 1
    # the sleep task made no folder; the worker's own (made at start) went when it stopped
    assert worker.settings.work_dir is not None
    assert list(worker.settings.work_dir.iterdir()) == []


def test_a_raising_kind_is_reported_as_failed(coordinator: FakeCoordinator, make_worker,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kinds.KINDS, "boom", BoomKind())
    coordinator.add_lease(1, "boom", {})
    coordinator.add_lease(2, "boom", {"invalid": True})
    worker = make_worker(allow=["boom"], slots=2)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: 1 in coordinator.results and 2 in coordinator.results)
    crash = coordinator.results[1][0]
    assert crash.outcome == "failed" and crash.reason is not None
    assert crash.reason.startswith("RuntimeError") and "kaboom" in crash.reason
    assert "Traceback" in crash.reason and crash.retryable is True
    assert crash.log_lines == ["about to fail"]
    # a kind's own refusal is its message, for people: no exception class, no traceback
    refused = coordinator.results[2][0]
    assert refused.retryable is False and refused.reason is not None
    assert "backwards" in refused.reason and "Traceback" not in refused.reason
    assert "InvalidInput" not in refused.reason
    assert stop(worker, thread, codes) == 0


def test_a_cancelled_task_is_stopped_without_a_report(coordinator: FakeCoordinator,
                                                      make_worker) -> None:
    coordinator.add_lease(3, "sleep", {"milliseconds": 60_000})
    worker = make_worker()
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(worker.running) == 1)
    began = time.monotonic()
    coordinator.cancel_task(3)
    assert coordinator.wait_for(lambda: worker.outcomes["dropped"] == 1)
    assert time.monotonic() - began < WAIT
    assert 3 not in coordinator.results
    assert not [r for s in coordinator.syncs() for r in s.reports
                if r.task_id == 3 and r.outcome != "running"]
    assert stop(worker, thread, codes) == 0


def test_unknown_allowed_kind_is_refused(make_worker) -> None:
    with pytest.raises(InvalidInput, match="blender-magic.*known kinds: .*render, sleep, sweep"):
        make_worker(allow=["sleep", "blender-magic"])


def test_run_worker_returns_2_on_bad_settings(tmp_path: Path) -> None:
    logger = logging.getLogger("parallel_pilot.worker")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    try:
        settings = WorkerSettings(join_token="", allow=["sleep"], cache_dir=tmp_path)
        assert run_worker(settings) == 2
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


def test_sweep_task_fetches_inputs_and_uploads_outputs(coordinator: FakeCoordinator,
                                                       make_worker) -> None:
    data = b"41\n"
    sha = hashlib.sha256(data).hexdigest()
    coordinator.blobs[sha] = data
    script = ("import pathlib; n = int(pathlib.Path('in/data.txt').read_text()); "
              "pathlib.Path('out.txt').write_text(str(n + 1)); print('wrote', n + 1)")
    coordinator.add_lease(30, "sweep", {
        "item": "1", "command": [sys.executable, "-c", script], "collect": ["out.txt"],
        "timeout_seconds": None, "output_cap": 1000}, inputs={"in/data.txt": sha})
    worker = make_worker(allow=["sweep"])
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: 30 in coordinator.results, timeout=10)
    complete = coordinator.results[30][0]
    assert complete.result is not None and complete.result["exit_code"] == 0, complete
    out_sha = complete.result["files"]["out.txt"]
    assert coordinator.blobs[out_sha] == b"42"
    assert coordinator.attempt_outputs == [
        {"path": "items/1/out.txt", "sha256": out_sha, "size": 2}]
    lines = coordinator.worker_logs[30]
    assert lines[0].startswith("$ ") and "wrote 42" in lines
    assert stop(worker, thread, codes) == 0
    assert worker.cache.path_of(sha).read_bytes() == data  # kept in the cache


def test_shutdown_releases_unfinished_tasks_and_leaves(coordinator: FakeCoordinator,
                                                       make_worker) -> None:
    coordinator.add_lease(8, "sleep", {"milliseconds": 60_000})
    worker = make_worker(drain_seconds=0.05)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(worker.running) == 1)
    assert stop(worker, thread, codes) == 0
    syncs = coordinator.syncs()
    released = [n for n, s in enumerate(syncs)
                if any(r.task_id == 8 and r.outcome == "released" for r in s.reports)]
    leaving = [n for n, s in enumerate(syncs) if s.leaving]
    assert released and leaving and released[0] <= leaving[0]
    assert 8 not in coordinator.results and coordinator.leased == {}
    assert [t.task_id for t in coordinator.ready] == [8]  # back in the queue
    assert worker.outcomes["released"] == 1


def test_drain_lets_a_short_task_finish(coordinator: FakeCoordinator, make_worker) -> None:
    coordinator.add_lease(9, "sleep", {"milliseconds": 200})
    worker = make_worker(drain_seconds=WAIT)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(worker.running) == 1)
    assert stop(worker, thread, codes) == 0
    assert outcomes(coordinator, 9) == ["completed"]
    assert not [r for s in coordinator.syncs() for r in s.reports if r.outcome == "released"]


def test_a_lease_answered_after_the_stop_goes_back_at_once(coordinator: FakeCoordinator,
                                                           make_worker) -> None:
    worker = make_worker()
    thread, codes = start(worker)
    # the worker is idle in its long poll
    assert coordinator.wait_for(lambda: any(s.wait_seconds > 0 for s in coordinator.syncs()))
    began = time.monotonic()
    worker.request_stop()
    coordinator.add_lease(11, "sleep", {"milliseconds": 0})  # the poll answers it
    thread.join(WAIT)
    assert codes == [0] and time.monotonic() - began < WAIT
    assert coordinator.left and coordinator.leased == {}
    assert 11 not in coordinator.results  # never run, and back in the queue
    assert [t.task_id for t in coordinator.ready] == [11]


def test_a_lease_answered_while_stopping_is_handed_back(coordinator: FakeCoordinator,
                                                        make_worker) -> None:
    worker = make_worker()
    coordinator.on_leased = worker.request_stop  # the stop arrives as the poll answers
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: any(s.wait_seconds > 0 for s in coordinator.syncs()))
    coordinator.add_lease(14, "sleep", {"milliseconds": 0})
    thread.join(WAIT)
    assert codes == [0] and coordinator.left and coordinator.leased == {}
    assert 14 not in coordinator.results
    assert [(t.task_id, t.attempt) for t in coordinator.ready] == [(14, 2)]  # requeued


def test_a_result_whose_answer_was_lost_is_sent_again_and_applied_once(
        coordinator: FakeCoordinator, make_worker) -> None:
    coordinator.add_lease(12, "sleep", {"milliseconds": 100})
    worker = make_worker()
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(worker.running) == 1)
    coordinator.drop_answers = 1  # the next sync is applied, its answer lost
    assert coordinator.wait_for(lambda: worker.outcomes["completed"] + worker.outcomes[
        "dropped"] == 1)
    carrying = [s for s in coordinator.syncs()
                if any(r.task_id == 12 and r.outcome == "completed" for r in s.reports)]
    assert len(carrying) >= 1
    assert outcomes(coordinator, 12) == ["completed"]  # applied exactly once
    assert stop(worker, thread, codes) == 0


def test_waits_for_a_restarting_coordinator(coordinator: FakeCoordinator, make_worker,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(agent, "BACKOFF_START_SECONDS", 0.01)
    coordinator.down_for = 3  # register fails three times before the coordinator is back
    coordinator.add_lease(12, "sleep", {"milliseconds": 0})
    worker = make_worker()
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: outcomes(coordinator, 12) == ["completed"])
    with caplog.at_level(logging.WARNING, logger="parallel_pilot.worker"):
        logging.getLogger("parallel_pilot.worker").propagate = True
        coordinator.down_for = 2  # and again between syncs
        coordinator.add_lease(13, "sleep", {"milliseconds": 0})
        assert coordinator.wait_for(lambda: outcomes(coordinator, 13) == ["completed"])
        # the loop logs its return after the answer that applied the result
        assert coordinator.wait_for(lambda: "answers again" in caplog.text)
    assert thread.is_alive()
    assert "cannot reach the coordinator at http://coordinator.test (connection refused); " \
           "retrying for up to 120 s…" in caplog.text
    assert "answers again" in caplog.text
    assert stop(worker, thread, codes) == 0


def test_slots_bound_concurrent_tasks(coordinator: FakeCoordinator, make_worker,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kinds.KINDS, "count", CountKind())
    CountKind.release.clear()
    CountKind.most = 0
    for task_id in range(21, 27):
        coordinator.add_lease(task_id, "count", {})
    worker = make_worker(allow=["count"], slots=2)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: CountKind.now == 2)
    assert all(s.free_slots <= 2 for s in coordinator.syncs())
    CountKind.release.set()
    assert coordinator.wait_for(lambda: len(coordinator.results) == 6)
    assert CountKind.most == 2
    assert stop(worker, thread, codes) == 0


def test_fast_tasks_are_prefetched_within_the_grant(coordinator: FakeCoordinator,
                                                    make_worker) -> None:
    coordinator.max_prefetch = 3
    for task_id in range(1, 201):
        coordinator.add_lease(task_id, "sleep", {"milliseconds": 0})
    worker = make_worker()
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(coordinator.results) == 200, timeout=20)
    assert max(s.prefetch for s in coordinator.syncs()) > 0
    assert coordinator.most_held <= 1 + 3
    assert coordinator.wait_for(lambda: worker.outcomes["completed"] == 200)
    assert stop(worker, thread, codes) == 0


def test_a_refused_join_token_ends_the_worker_with_2(coordinator: FakeCoordinator,
                                                      make_worker) -> None:
    coordinator.join_tokens = {"another"}
    worker = make_worker()
    thread, codes = start(worker)
    thread.join(WAIT)
    assert codes == [2]
    assert worker.fatal is not None and "unknown join token" in worker.fatal.message


def test_the_worker_token_is_sent_on_every_sync(coordinator: FakeCoordinator,
                                               make_worker) -> None:
    seen: list[str | None] = []

    def spy(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/workers/sync"):
            seen.append(request.headers.get("Authorization"))
        return coordinator.handle(request)

    worker = make_worker(spy)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(seen) >= 1)
    assert stop(worker, thread, codes) == 0
    assert set(seen) == {f"Bearer {FAKE_WORKER_TOKEN}"}


def test_a_revoked_worker_stops_its_tasks_and_ends_with_2(coordinator: FakeCoordinator,
                                                          make_worker) -> None:
    revoked = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if revoked.is_set() and request.url.path.endswith("/workers/sync"):
            return httpx.Response(403, json={"error": "forbidden",
                                             "message": "this worker was revoked"})
        return coordinator.handle(request)

    coordinator.add_lease(40, "sleep", {"milliseconds": 60_000})
    worker = make_worker(handler)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(worker.running) == 1)
    revoked.set()
    thread.join(WAIT)
    assert codes == [2]
    assert worker.fatal is not None and "revoked" in worker.fatal.message
    assert worker.running == [] and 40 not in coordinator.results
