"""An in-memory stand-in for a coordinator's user-facing API, for tests without sockets.

``FakeCoordinator().transport()`` is an ``httpx.MockTransport`` to hand to ``Client``. It
keeps jobs, tasks, outputs, logs, workers and blobs in dicts, records every request, and
lets a test move jobs along by hand (``finish``, ``add_output``). It checks bearer tokens
and speaks the wire models of ``core.protocol``, but plans nothing: a job gets one task per
item (sweep) or per ``tasks`` (sleep), and only as far as a test needs.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from parallel_pilot.core.protocol import (
    API_PREFIX,
    Capabilities,
    Health,
    JobInfo,
    JobSubmit,
    LogLine,
    OutputInfo,
    TaskInfo,
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
        self.requests.append(Recorded(request.method, path, dict(request.url.params), body))
        try:
            if path != "/health" and request.headers.get("authorization") != (
                    f"Bearer {self.token}"):
                raise Unauthorized("that token is not valid")
            return self._route(request.method, path, dict(request.url.params), body)
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
