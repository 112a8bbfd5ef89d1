"""An in-memory stand-in for a coordinator's user-facing API, for tests without sockets.

``FakeCoordinator().transport()`` is an ``httpx.MockTransport`` to hand to ``Client``. It
keeps jobs, tasks, outputs, logs, workers and blobs in dicts, records every request, and
lets a test move jobs along by hand (``finish``, ``add_output``). It checks bearer tokens
and speaks the wire models of ``core.protocol``, but plans nothing: a job gets one task per
item (sweep) or per ``tasks`` (sleep), and only as far as a test needs.

It also plays the worker side simply, for unit tests of the worker: ``register`` (any
join token in ``join_tokens``), ``POST /workers/sync`` after the contract of
``core.protocol`` (reports fenced by (task, attempt), held attempts reconciled, stops, at
most the worker's slots plus the granted prefetch, a long poll woken by ``add_lease``),
an attempt's outputs and its job's outputs. ``down_for`` refuses connections,
``drop_answers`` applies syncs and then loses their answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from parallel_pilot.core.protocol import (
    API_PREFIX,
    AttemptReport,
    AttemptStop,
    Capabilities,
    Health,
    JobInfo,
    JobSubmit,
    LogLine,
    OutputInfo,
    OutputRequest,
    RegisterRequest,
    ReportVerdict,
    SyncRequest,
    SyncResponse,
    TaskInfo,
    TaskLease,
    UserInfo,
    WorkerInfo,
)
from parallel_pilot.core.ranges import parse_items
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.errors import (
    BlobMismatch,
    BlobNotFound,
    InvalidInput,
    JobNotFound,
    NotFound,
    PilotError,
    TaskNotFound,
    Unauthorized,
    error_body,
)

FAKE_TOKEN = "fake-token"  # the one user token the fake accepts
FAKE_WORKER_TOKEN = "fake-worker-token"  # the token a registered worker gets
FAKE_WORKER_ID = 5


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, str]
    body: Any


@dataclass
class FakeCoordinator:
    token: str = FAKE_TOKEN
    user: str = "admin"
    jobs: dict[int, JobInfo] = field(default_factory=dict)
    tasks: dict[int, list[TaskInfo]] = field(default_factory=dict)
    outputs: dict[int, list[OutputInfo]] = field(default_factory=dict)
    logs: dict[int, list[LogLine]] = field(default_factory=dict)
    workers: list[WorkerInfo] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    # states a job reports on successive GET /jobs/{id} before it stays where it ends
    script: dict[int, list[JobState]] = field(default_factory=dict)
    # ---- the worker side
    join_tokens: set[str] = field(default_factory=lambda: {"join"})
    lease_seconds: float = 60.0
    sync_seconds: float = 0.05  # the heartbeat it asks for
    max_prefetch: int = 64
    poll_cap_seconds: float = 2.0  # a long poll waits at most this long here
    slots: int = 1  # the registered worker's slots
    ready: list[TaskLease] = field(default_factory=list)  # tasks waiting for a worker
    leased: dict[int, TaskLease] = field(default_factory=dict)  # task id -> its lease
    cancelled: set[int] = field(default_factory=set)  # tasks whose attempt must stop
    results: dict[int, list[AttemptReport]] = field(default_factory=dict)  # accepted finals
    worker_logs: dict[int, list[str]] = field(default_factory=dict)  # task id -> lines
    attempt_outputs: list[dict[str, Any]] = field(default_factory=list)
    most_held: int = 0  # the most attempts the worker held at once
    left: bool = False
    down_for: int = 0  # refuse this many connections first (restarting)
    drop_answers: int = 0  # apply this many syncs, then lose their answers
    on_leased: Any = None  # called (no arguments) after a sync leased tasks, before answering
    closed: threading.Event = field(default_factory=threading.Event)  # ends long polls
    changed: threading.Condition = field(default_factory=threading.Condition)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # ------------------------------------------------------------ test helpers

    def add_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def add_output(self, job_id: int, path: str, data: bytes, task_id: int | None = None) -> None:
        sha = self.add_blob(data)
        self.outputs.setdefault(job_id, []).append(
            OutputInfo(path=path, sha256=sha, size=len(data), task_id=task_id))

    def finish(self, job_id: int, state: JobState = JobState.COMPLETED,
               error: str | None = None) -> JobInfo:
        job = self.jobs[job_id]
        task_state = {JobState.COMPLETED: TaskState.DONE, JobState.FAILED: TaskState.FAILED,
                      JobState.CANCELLED: TaskState.CANCELLED}.get(state, TaskState.READY)
        done = job.tasks_total if state == JobState.COMPLETED else 0
        self.tasks[job_id] = [t.model_copy(update={"state": task_state, "error": error})
                              for t in self.tasks.get(job_id, [])]
        job = job.model_copy(update={
            "state": state, "error": error, "tasks_done": done,
            "progress": 1.0 if state == JobState.COMPLETED else 0.0,
            "task_counts": {str(task_state): job.tasks_total},
            "finished_at": time.time() if state.finished else None,
        })
        self.jobs[job_id] = job
        return job

    def add_lease(self, task_id: int, kind: str, payload: dict[str, Any],
                  inputs: dict[str, str] | None = None, job_id: int = 1) -> None:
        """A task for the worker (attempt 1), handed out by the next sync."""
        with self.changed:
            self.ready.append(TaskLease(
                task_id=task_id, attempt=1, job_id=job_id, kind=kind, name=f"item {task_id}",
                payload=payload, inputs=inputs or {}, lease_expires_at=time.time() + 60,
                heartbeat_seconds=self.sync_seconds))
            self.changed.notify_all()

    def cancel_task(self, task_id: int) -> None:
        with self.changed:
            self.cancelled.add(task_id)
            self.ready = [t for t in self.ready if t.task_id != task_id]

    def syncs(self) -> list[SyncRequest]:
        with self.changed:
            return [SyncRequest.model_validate(r.body) for r in self.requests
                    if r.path == "/workers/sync"]

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` holds (checked on every request and otherwise
        every 20 ms), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.02))
            return True

    def bodies(self, method: str, path_prefix: str) -> list[Any]:
        return [r.body for r in self.requests
                if r.method == method and r.path.startswith(path_prefix)]

    # ------------------------------------------------------------ dispatch

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix(API_PREFIX)
        content = request.read()
        body: Any = content
        if request.headers.get("content-type", "").startswith("application/json") and content:
            body = json.loads(content)
        with self.changed:
            if self.down_for > 0:
                self.down_for -= 1
                raise httpx.ConnectError("connection refused", request=request)
            self.requests.append(Recorded(request.method, path, dict(request.url.params),
                                          body))
            self.changed.notify_all()
        params = dict(request.url.params)
        worker_side = path.startswith(("/workers/", "/attempts/"))
        tokens = {FAKE_WORKER_TOKEN} if worker_side else {self.token}
        if path.startswith("/blobs/"):
            tokens.add(FAKE_WORKER_TOKEN)  # workers fetch inputs and upload outputs
        try:
            if path == "/workers/register":
                return _ok(self._register(RegisterRequest.model_validate(body)))
            if path != "/health" and request.headers.get("authorization") not in {
                    f"Bearer {t}" for t in tokens}:
                raise Unauthorized("that token is not valid")
            if path == "/workers/sync":
                answer = self._sync(SyncRequest.model_validate(body))
                if answer.tasks and self.on_leased is not None:
                    self.on_leased()
                with self.changed:
                    if self.drop_answers > 0:
                        self.drop_answers -= 1
                        raise httpx.ReadError("connection dropped", request=request)
                return _ok(answer)
            if attempt := re.fullmatch(r"/attempts/(\d+)/(\d+)/(outputs|job-outputs)", path):
                return self._attempt(int(attempt.group(1)), attempt.group(3), params, body)
            return self._route(request.method, path, params, body)
        except PilotError as exc:
            return httpx.Response(exc.status, json=error_body(exc))

    def _route(self, method: str, path: str, params: dict[str, str], body: Any) -> httpx.Response:
        if blob := re.fullmatch(r"/blobs/([0-9a-f]{64})", path):
            return self._blob(method, blob.group(1), body)
        if method == "GET" and path == "/health":
            return _ok(Health(ok=True, version="fake"))
        if method == "GET" and path == "/me":
            return _ok(UserInfo(name=self.user, is_admin=True))
        if method == "POST" and path == "/jobs":
            return _ok(self._submit(JobSubmit.model_validate(body)), 201)
        if method == "GET" and path == "/jobs":
            jobs = sorted(self.jobs.values(), key=lambda j: -j.id)
            if "state" in params:
                jobs = [j for j in jobs if j.state == params["state"]]
            return _ok({"jobs": [j.model_dump(mode="json") for j in jobs]})
        if method == "GET" and path == "/workers":
            return _ok({"workers": [w.model_dump(mode="json") for w in self.workers]})
        match = re.fullmatch(r"/jobs/(\d+)(/\w+)?", path)
        if not match:
            raise NotFound(f"no route {method} {path}")
        job_id, action = int(match.group(1)), match.group(2) or ""
        if job_id not in self.jobs:
            raise JobNotFound(f"no job {job_id}")
        if method == "GET" and action == "":
            return _ok(self._poll(job_id))
        if method == "GET" and action == "/tasks":
            return _ok({"tasks": [t.model_dump(mode="json") for t in self.tasks[job_id]]})
        if method == "GET" and action == "/outputs":
            return _ok({"outputs": [o.model_dump(mode="json")
                                    for o in self.outputs.get(job_id, [])]})
        if method == "GET" and action == "/logs":
            lines = self.logs.get(job_id, [])
            if "task" in params:  # the task's number in the job, 1-based
                number = int(params["task"])
                if not 1 <= number <= len(self.tasks[job_id]):
                    raise TaskNotFound(f"job {job_id} has no task {number}")
                params["task_id"] = str(self.tasks[job_id][number - 1].id)
            if "task_id" in params:
                lines = [ln for ln in lines if ln.task_id == int(params["task_id"])]
            lines = [ln for ln in lines if ln.id > int(params.get("after", 0))]
            lines = lines[:int(params.get("limit", 10_000))]
            return _ok({"lines": [ln.model_dump(mode="json") for ln in lines]})
        if method == "POST" and action == "/cancel":
            return _ok(self.finish(job_id, JobState.CANCELLED, "cancelled by admin"))
        if method == "POST" and action == "/retry":
            return _ok(self.finish(job_id, JobState.QUEUED))
        raise NotFound(f"no route {method} {path}")

    # ------------------------------------------------------------ the worker side

    def _register(self, request: RegisterRequest) -> dict[str, Any]:
        if request.join_token not in self.join_tokens:
            raise Unauthorized("unknown join token")
        with self.changed:
            self.slots = request.capabilities.slots
            self.left = False
        return {"worker_id": FAKE_WORKER_ID, "worker_token": FAKE_WORKER_TOKEN,
                "lease_seconds": self.lease_seconds, "heartbeat_seconds": self.sync_seconds}

    def _sync(self, request: SyncRequest) -> SyncResponse:
        answer = SyncResponse(lease_expires_at=time.time() + self.lease_seconds,
                              sync_seconds=self.sync_seconds, lease_seconds=self.lease_seconds)
        with self.changed:
            listed = {(r.task_id, r.attempt) for r in request.held}
            for report in request.reports:
                answer.verdicts.append(self._apply(report))
                if report.outcome == "running":
                    listed.add((report.task_id, report.attempt))
            for task_id, lease in list(self.leased.items()):
                key = (task_id, lease.attempt)
                if task_id in self.cancelled and key in listed:
                    answer.stop.append(AttemptStop(task_id=task_id, attempt=lease.attempt,
                                                   reason="the task was cancelled"))
                    del self.leased[task_id]
                elif key not in listed or request.leaving:
                    self._requeue(lease)  # lost on the way, or handed back by leaving
            if request.leaving:
                self.left = True
                self.changed.notify_all()
                return answer
            answer.prefetch_granted = min(request.prefetch, self.max_prefetch)
            deadline = time.monotonic() + min(request.wait_seconds, self.poll_cap_seconds)
            while True:
                room = self.slots + answer.prefetch_granted - len(self.leased)
                want = min(request.free_slots + request.prefetch, room)
                while want > 0 and self.ready and not self.left:
                    lease = self.ready.pop(0)
                    self.leased[lease.task_id] = lease
                    answer.tasks.append(lease)
                    want -= 1
                self.most_held = max(self.most_held, len(self.leased))
                left = deadline - time.monotonic()
                if answer.tasks or answer.verdicts or answer.stop or left <= 0 or \
                        self.closed.is_set() or want <= 0:
                    break
                self.changed.wait(min(left, 0.05))  # the long poll
            self.changed.notify_all()
        return answer

    def _apply(self, report: AttemptReport) -> ReportVerdict:
        lease = self.leased.get(report.task_id)
        if lease is None or lease.attempt != report.attempt or report.task_id in self.cancelled:
            return ReportVerdict(task_id=report.task_id, attempt=report.attempt,
                                 accepted=False, reason="not held by this worker")
        self.worker_logs.setdefault(report.task_id, []).extend(report.log_lines)
        if report.outcome == "completed" or (report.outcome == "failed"
                                             and not report.retryable):
            self.results.setdefault(report.task_id, []).append(report)
            del self.leased[report.task_id]
        elif report.outcome in ("failed", "released"):
            if report.outcome == "failed":
                self.results.setdefault(report.task_id, []).append(report)
            self._requeue(lease)
        return ReportVerdict(task_id=report.task_id, attempt=report.attempt, accepted=True)

    def _requeue(self, lease: TaskLease) -> None:
        self.leased.pop(lease.task_id, None)
        self.ready.append(lease.model_copy(update={"attempt": lease.attempt + 1}))

    def _attempt(self, task_id: int, action: str, params: dict[str, str],
                 body: Any) -> httpx.Response:
        lease = self.leased.get(task_id)
        if lease is None:
            raise TaskNotFound(f"task {task_id} is not held by this worker")
        if action == "outputs":
            output = OutputRequest.model_validate(body)
            self.attempt_outputs.append(output.model_dump())
            self.add_output(lease.job_id, output.path, self.blobs.get(output.sha256, b""),
                            task_id)
            return _ok({"ok": True})
        prefix = params.get("prefix", "")
        return _ok({"outputs": [o.model_dump(mode="json")
                                for o in self.outputs.get(lease.job_id, [])
                                if o.path.startswith(prefix)]})

    def _poll(self, job_id: int) -> JobInfo:
        states = self.script.get(job_id)
        if states:
            state = states.pop(0)
            if state.finished:
                return self.finish(job_id, state, None if state == JobState.COMPLETED
                                   else "task 1 failed: exit 1")
            self.jobs[job_id] = self.jobs[job_id].model_copy(update={"state": state})
        return self.jobs[job_id]

    def _blob(self, method: str, sha: str, body: Any) -> httpx.Response:
        if method == "HEAD":
            if sha not in self.blobs:
                return httpx.Response(404)
            return httpx.Response(200, headers={"Content-Length": str(len(self.blobs[sha]))})
        if method == "PUT":
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            if hashlib.sha256(data).hexdigest() != sha:
                raise BlobMismatch()
            self.blobs[sha] = data
            return _ok({"sha256": sha, "size": len(data)}, 201)
        if method == "GET":
            if sha not in self.blobs:
                raise BlobNotFound()
            return httpx.Response(200, content=self.blobs[sha])
        raise NotFound(f"no route {method} /blobs/{sha}")

    def _submit(self, submit: JobSubmit) -> JobInfo:
        if submit.kind == "sweep":
            raw = submit.params.get("items")
            items = parse_items(raw) if isinstance(raw, str) else list(raw or [])
            for sha in submit.params.get("files", {}).values():
                if sha not in self.blobs:
                    raise InvalidInput(f"blob {sha[:12]} has not been uploaded")
            names = [f"item {i}" for i in items]
        elif submit.kind == "sleep":
            names = [f"sleep {i}" for i in range(int(submit.params.get("tasks", 1)))]
        else:
            raise InvalidInput(f"the fake knows no kind {submit.kind!r}")
        job_id = max(self.jobs, default=0) + 1
        now = time.time()
        self.tasks[job_id] = [
            TaskInfo(id=job_id * 1000 + i, job_id=job_id, index=i, name=name, kind=submit.kind,
                     state=TaskState.READY, attempt=0, failures=0, worker=None, progress=None,
                     message=None, error=None, result=None, started_at=None, finished_at=None)
            for i, name in enumerate(names)
        ]
        job = JobInfo(
            id=job_id, name=submit.name or f"{submit.kind} {job_id}", kind=submit.kind,
            state=JobState.QUEUED, owner=self.user, priority=submit.priority,
            params=submit.params, created_at=now, started_at=None, finished_at=None, error=None,
            tasks_total=len(names), tasks_done=0, task_counts={"ready": len(names)},
            progress=0.0, active_workers=0, eta_seconds=None,
        )
        self.jobs[job_id] = job
        return job


def fake_worker(worker_id: int = 1, name: str = "box-1", state: str = "idle") -> WorkerInfo:
    return WorkerInfo(
        id=worker_id, name=name, state=state,  # type: ignore[arg-type]
        capabilities=Capabilities(cpu_cores=8, ram_bytes=16 * 1024**3, kinds=["sleep"]),
        current_tasks=[], tasks_done=3, last_seen=time.time(), created_at=time.time(),
    )


def _ok(data: Any, status: int = 200) -> httpx.Response:
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    return httpx.Response(status, json=data)
