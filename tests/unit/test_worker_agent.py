"""The worker agent against a fake coordinator (``httpx.MockTransport``, no sockets):
register, lease, heartbeats, reports, stop answers, shutdown and an absent coordinator."""

from __future__ import annotations

import hashlib
import json
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
from parallel_pilot.core.protocol import Capabilities, TaskLease
from parallel_pilot.core.settings import WorkerSettings
from parallel_pilot.errors import InvalidInput
from parallel_pilot.http import Connection
from parallel_pilot.kinds.base import RunContext
from parallel_pilot.worker import agent
from parallel_pilot.worker.agent import Worker, run_worker

WAIT = 2.0  # seconds a test waits for a condition at most
WORKER_TOKEN = "worker-secret"


class FakeCoordinator:
    """Answers the worker endpoints from memory and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any] | None, str | None]] = []
        self.changed = threading.Condition()
        self.pending: list[TaskLease] = []
        self.heartbeat_answer: dict[str, Any] = {"action": "continue"}
        self.down_for = 0  # refuse this many connections first (coordinator restarting)
        self.on_lease: Callable[[], None] | None = None
        self.closed = threading.Event()  # set at teardown: ends held long polls
        self.blobs: dict[str, bytes] = {}

    def add_task(self, task_id: int, kind: str, payload: dict[str, Any],
                 heartbeat_seconds: float = 0.05, inputs: dict[str, str] | None = None) -> None:
        self.pending.append(TaskLease(
            task_id=task_id, attempt=1, job_id=1, kind=kind, name=f"item {task_id}",
            payload=payload, inputs=inputs or {}, lease_expires_at=time.time() + 60,
            heartbeat_seconds=heartbeat_seconds))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        body = json.loads(request.content) if request.content else None
        if self.down_for > 0:
            self.down_for -= 1
            raise httpx.ConnectError("connection refused", request=request)
        if path.startswith("/blobs/"):
            return self.blob(request, path.rsplit("/", 1)[1])
        with self.changed:
            self.calls.append((path, body, request.headers.get("Authorization")))
            self.changed.notify_all()
        if path == "/workers/register":
            return httpx.Response(200, json={"worker_id": 5, "worker_token": WORKER_TOKEN,
                                             "lease_seconds": 60.0, "heartbeat_seconds": 0.05})
        if path == "/workers/lease":
            assert body is not None
            if self.on_lease is not None:
                self.on_lease()
            tasks, self.pending = self.pending[: body["slots"]], self.pending[body["slots"]:]
            if not tasks:
                self.closed.wait(min(body["wait_seconds"], WAIT))  # the long poll
            return httpx.Response(200, json={"tasks": [t.model_dump() for t in tasks]})
        if path.endswith("/heartbeat"):
            return httpx.Response(200, json={**self.heartbeat_answer,
                                             "lease_expires_at": time.time() + 60})
        return httpx.Response(200, json={"ok": True})

    def blob(self, request: httpx.Request, sha: str) -> httpx.Response:
        if request.method == "PUT":
            self.blobs[sha] = request.read()
            return httpx.Response(201, json={"sha256": sha, "size": len(self.blobs[sha])})
        if sha not in self.blobs:
            return httpx.Response(404, json={"error": "blob_not_found", "message": sha})
        return httpx.Response(200, content=b"" if request.method == "HEAD" else self.blobs[sha])

    def paths(self) -> list[str]:
        with self.changed:
            return [path for path, _, _ in self.calls]

    def bodies(self, suffix: str) -> list[dict[str, Any]]:
        with self.changed:
            return [body or {} for path, body, _ in self.calls if path.endswith(suffix)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.02))
            return True


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


@pytest.fixture
def coordinator() -> Iterator[FakeCoordinator]:
    fake = FakeCoordinator()
    yield fake
    fake.closed.set()


@pytest.fixture
def make_worker(coordinator: FakeCoordinator, tmp_path: Path):
    def make(handler: Callable[[httpx.Request], httpx.Response] = coordinator,
             **overrides: Any) -> Worker:
        options: dict[str, Any] = {
            "server": "http://coordinator.test", "join_token": "join", "name": "w1",
            "allow": ["sleep"], "cache_dir": tmp_path / "cache", "work_dir": tmp_path / "work",
            "drain_seconds": 0.0, **overrides}
        return Worker(
            WorkerSettings(**options),
            connection_factory=lambda server: Connection(
                server, transport=httpx.MockTransport(handler), retry_seconds=0),
            capabilities=Capabilities(cpu_cores=1, ram_bytes=0, kinds=options["allow"]),
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


def test_runs_a_sleep_task_with_heartbeats_and_completes(coordinator: FakeCoordinator,
                                                         make_worker) -> None:
    coordinator.add_task(17, "sleep", {"milliseconds": 250})
    worker = make_worker()
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: "/attempts/17/1/complete" in coordinator.paths())
    paths = coordinator.paths()
    assert paths[0] == "/workers/register" and paths[1] == "/workers/lease"
    assert "/attempts/17/1/heartbeat" in paths
    assert paths.index("/attempts/17/1/heartbeat") < paths.index("/attempts/17/1/complete")
    register = coordinator.bodies("/register")[0]
    assert register["join_token"] == "join" and register["name"] == "w1"
    lease_auth = [auth for path, _, auth in coordinator.calls if path == "/workers/lease"]
    assert lease_auth[0] == f"Bearer {WORKER_TOKEN}"
    result = coordinator.bodies("/complete")[0]["result"]
    assert result["slept_ms"] == 250 and result["stopped"] is False
    assert stop(worker, thread, codes) == 0
    assert coordinator.paths()[-1] == "/workers/leave"
    assert worker.outcomes["completed"] == 1
    assert list((worker.settings.work_dir or Path()).iterdir()) == []  # workdir removed


def test_a_raising_kind_is_reported_as_failed(coordinator: FakeCoordinator, make_worker,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kinds.KINDS, "boom", BoomKind())
    coordinator.add_task(1, "boom", {})
    coordinator.add_task(2, "boom", {"invalid": True})
    worker = make_worker(allow=["boom"], slots=2)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(coordinator.bodies("/fail")) == 2)
    bodies = coordinator.bodies("/fail")
    crash = next(b for b in bodies if b["reason"].startswith("RuntimeError"))
    assert "kaboom" in crash["reason"] and "Traceback" in crash["reason"]
    assert crash["retryable"] is True and crash["log_lines"] == ["about to fail"]
    # a kind's own refusal is its message, for people: no exception class, no traceback
    refused = next(b for b in bodies if b is not crash)
    assert refused["retryable"] is False and "backwards" in refused["reason"]
    assert "InvalidInput" not in refused["reason"] and "Traceback" not in refused["reason"]
    assert not coordinator.bodies("/complete")
    assert stop(worker, thread, codes) == 0


def test_a_stop_answer_stops_the_task_without_a_report(coordinator: FakeCoordinator,
                                                       make_worker) -> None:
    coordinator.heartbeat_answer = {"action": "stop", "reason": "job cancelled"}
    coordinator.add_task(3, "sleep", {"milliseconds": 60_000})
    worker = make_worker()
    thread, codes = start(worker)
    began = time.monotonic()
    assert coordinator.wait_for(lambda: worker.outcomes["dropped"] == 1)
    assert time.monotonic() - began < WAIT
    paths = coordinator.paths()
    assert "/attempts/3/1/heartbeat" in paths
    assert not [p for p in paths if p.endswith(("/complete", "/fail"))]
    assert stop(worker, thread, codes) == 0


def test_a_refused_heartbeat_stops_the_task(coordinator: FakeCoordinator,
                                            make_worker) -> None:
    original = coordinator.__call__

    def stale(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/heartbeat"):
            return httpx.Response(409, json={"error": "stale_attempt",
                                             "message": "attempt 1 no longer holds task 4"})
        return original(request)

    coordinator.add_task(4, "sleep", {"milliseconds": 60_000})
    worker = make_worker(stale)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: worker.outcomes["dropped"] == 1)
    assert not [p for p in coordinator.paths() if p.endswith(("/complete", "/fail"))]
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
    coordinator.add_task(30, "sweep", {
        "item": "1", "command": [sys.executable, "-c", script], "collect": ["out.txt"],
        "timeout_seconds": None, "output_cap": 1000}, inputs={"in/data.txt": sha})
    worker = make_worker(allow=["sweep"])
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(coordinator.bodies("/complete")) == 1, timeout=5)
    complete = coordinator.bodies("/complete")[0]
    assert complete["result"]["exit_code"] == 0, complete
    out_sha = complete["result"]["files"]["out.txt"]
    assert coordinator.blobs[out_sha] == b"42"
    assert coordinator.bodies("/outputs") == [
        {"path": "items/1/out.txt", "sha256": out_sha, "size": 2}]
    sent_lines = [line for body in coordinator.bodies("/heartbeat") + [complete]
                  for line in body["log_lines"]]
    assert sent_lines[0].startswith("$ ") and "wrote 42" in sent_lines
    assert stop(worker, thread, codes) == 0
    assert worker.cache.path_of(sha).read_bytes() == data  # kept in the cache


def test_shutdown_releases_unfinished_tasks_and_leaves(coordinator: FakeCoordinator,
                                                       make_worker) -> None:
    coordinator.add_task(8, "sleep", {"milliseconds": 60_000}, heartbeat_seconds=10)
    worker = make_worker(drain_seconds=0.05)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(worker.running) == 1)
    assert stop(worker, thread, codes) == 0
    paths = coordinator.paths()
    assert "/attempts/8/1/release" in paths
    assert paths.index("/attempts/8/1/release") < paths.index("/workers/leave")
    assert not [p for p in paths if p.endswith(("/complete", "/fail"))]
    assert worker.outcomes["released"] == 1


def test_drain_lets_a_short_task_finish(coordinator: FakeCoordinator, make_worker) -> None:
    coordinator.add_task(9, "sleep", {"milliseconds": 200}, heartbeat_seconds=10)
    worker = make_worker(drain_seconds=WAIT)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(worker.running) == 1)
    assert stop(worker, thread, codes) == 0
    assert "/attempts/9/1/complete" in coordinator.paths()
    assert "/attempts/9/1/release" not in coordinator.paths()


def test_tasks_leased_after_stop_are_released(coordinator: FakeCoordinator,
                                              make_worker) -> None:
    worker = make_worker()
    coordinator.add_task(11, "sleep", {"milliseconds": 0})
    coordinator.on_lease = worker.request_stop  # the stop arrives while the poll is held
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: "/attempts/11/1/release" in coordinator.paths())
    thread.join(WAIT)
    assert codes == [0]
    assert "/attempts/11/1/heartbeat" not in coordinator.paths()
    assert "/attempts/11/1/complete" not in coordinator.paths()


def test_waits_for_a_restarting_coordinator(coordinator: FakeCoordinator, make_worker,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "BACKOFF_START_SECONDS", 0.01)
    coordinator.down_for = 3  # register fails three times before the coordinator is back
    coordinator.add_task(12, "sleep", {"milliseconds": 0})
    worker = make_worker()
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: "/attempts/12/1/complete" in coordinator.paths())
    coordinator.down_for = 2  # and again between leases
    assert coordinator.wait_for(lambda: coordinator.paths().count("/workers/lease") >= 2)
    assert thread.is_alive()
    assert stop(worker, thread, codes) == 0


def test_slots_bound_concurrent_tasks(coordinator: FakeCoordinator, make_worker) -> None:
    for task_id in (21, 22, 23):
        coordinator.add_task(task_id, "sleep", {"milliseconds": 150}, heartbeat_seconds=10)
    worker = make_worker(slots=2)
    thread, codes = start(worker)
    assert coordinator.wait_for(lambda: len(coordinator.bodies("/complete")) == 3)
    leases = coordinator.bodies("/workers/lease")
    assert leases[0]["slots"] == 2 and all(b["slots"] <= 2 for b in leases)
    assert stop(worker, thread, codes) == 0


def test_a_refused_join_token_ends_the_worker_with_2(coordinator: FakeCoordinator,
                                                      make_worker) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "unauthorized",
                                         "message": "unknown join token"})

    worker = make_worker(refuse)
    thread, codes = start(worker)
    thread.join(WAIT)
    assert codes == [2]
    assert worker.fatal is not None and "unknown join token" in worker.fatal.message
