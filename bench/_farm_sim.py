"""The simulated farm of ``bench/farm.py``: the real coordinator in this process (its
services over a real database, on a clock the simulation moves), simulated workers that
speak the real exchange, and one queue of events on that clock.

Coordinator side: the services the HTTP routes call, called as the routes call them:
``jobs.submit`` (``POST /jobs``), ``leasing.register`` (``POST /workers/register``),
``sync.exchange`` and, for an idle worker's long poll, ``sync.poll`` once woken by the
services' notifier (``POST /workers/sync``), ``blobs.receive`` naming the attempt
(``PUT /blobs/{sha256}`` with ``X-Pilot-Attempt``), ``leasing.add_output``
(``POST /attempts/…/outputs``), ``leasing.job_outputs`` (the assembly's frame list) and
``leasing.reap`` every ``reaper_seconds`` (the app's reaper). No HTTP: the routes only
parse and authenticate, and a worker's row is read once per registration, as their worker
cache does.

Worker side: the worker's own state machine (``worker.state.WorkerState``) decides when
to sync, what to report and when to take work; a simulated runner stands in for Blender:
a chunk takes the worker's start-up time, then each frame its seconds per frame times the
frame's cost, and every finished frame is uploaded for the attempt and posted as an output
while the next renders, as ``kinds/render/chunk.py`` does. Answers arrive at once (no
network delay). A worker that vanishes stops dead (a SIGKILL): it sends nothing more, its
lease expires and the reaper requeues what it held.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import inspect
import itertools
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from parallel_pilot.coordinator.app import build_services
from parallel_pilot.coordinator.bootstrap import ensure_admin
from parallel_pilot.coordinator.services import blobs, jobs, leasing, sync
from parallel_pilot.coordinator.services.context import ReadyNotifier, Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.tokens import hash_token
from parallel_pilot.core.protocol import (
    AttemptReport,
    Capabilities,
    JobSubmit,
    OutputRequest,
    RegisterRequest,
    SyncResponse,
    TaskLease,
    attempt_header,
)
from parallel_pilot.core.settings import CoordinatorSettings
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.errors import PilotError
from parallel_pilot.kinds.render.assemble import FRAMES_PREFIX, frame_output_path
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import copies as copy_queries
from parallel_pilot.worker.state import Send, Start, Stop, WorkerState

START_TIME = 1_800_000_000.0  # the simulated clock's reading at the submit
BLEND_HEADER = b"BLENDER17-01v0500"  # the header Blender 5.0 writes: the scene the job names
BLENDER_VERSION = "5.0.1"  # what the simulated workers report
SAME_TIME_STEPS = 1000  # steps of one worker at one instant before the simulation gives up
Key = tuple[int, int]  # (task id, attempt)


@dataclass(frozen=True)
class WorkerSpec:
    """One simulated machine: its render speed and when it is there."""

    name: str
    frame_seconds: float  # seconds a frame of cost 1.0 takes on it
    joins_at: float = 0.0  # seconds after the submit it registers
    vanishes_at: float | None = None  # seconds after the submit it dies (None: never)


@dataclass(frozen=True)
class FarmJob:
    """The render job and what simulating it costs besides the frames."""

    frames: list[int]
    cost: Mapping[int, float]  # frame -> its cost (1.0: the worker's seconds per frame)
    params: dict[str, Any]  # render job parameters beyond the scene and the frames
    startup_seconds: float  # per task: Blender starting and loading the scene
    assemble_seconds: float  # the assembly task's run time


@dataclass
class RunResult:
    """What one simulated job did, read from the coordinator's own records."""

    job_state: str
    tasks: int  # chunk tasks the job had
    makespan: float  # submit -> the last chunk done (every frame rendered), seconds
    job_seconds: float | None  # submit -> the job finished (the assembly included)
    failed_tasks: int
    lost_leases: int  # leases the reaper found expired
    frames_rendered: int  # frames the workers rendered, lost work included
    frames_credited: Counter[int]  # frame -> times it is in a done chunk's result
    frames_listed: Counter[int]  # frame -> times it is among the job's outputs
    frames_assembled: int | None  # frames the assembly task found, each once
    syncs: int
    reaps: int
    error: str | None
    backups_made: int = 0  # backup copies of stragglers the coordinator leased
    backups_won: int = 0  # of them, those whose result finished their task
    real_seconds: float = 0.0
    first_frames: list[int] = field(default_factory=list)  # the first 10 frames done
    rendered_at: list[tuple[float, int]] = field(default_factory=list)  # (seconds, frame)


class SimClock:
    """Time that moves only when the simulation says so."""

    def __init__(self, now: float = START_TIME) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Handle:
    __slots__ = ("fn", "cancelled")

    def __init__(self, fn: Callable[[], Awaitable[None] | None]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Events:
    """A priority queue of callbacks on the simulated clock, in time then insertion order."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, _Handle]] = []
        self._order = itertools.count()

    def at(self, when: float, fn: Callable[[], Awaitable[None] | None]) -> _Handle:
        handle = _Handle(fn)
        heapq.heappush(self._heap, (max(when, self.clock.now), next(self._order), handle))
        return handle

    async def run(self, until: float, stop: Callable[[], bool]) -> None:
        while self._heap and not stop():
            when, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            if when > until:
                return
            self.clock.now = when
            result = handle.fn()
            if inspect.isawaitable(result):
                await result


class _SimNotifier(ReadyNotifier):
    """The services' notifier: instead of waking asyncio waiters it schedules the
    simulation's wake of waiting long polls, at the current simulated time."""

    def __init__(self, wake: Callable[[dict[str, int] | None], None]) -> None:
        super().__init__()
        self._sim_wake = wake

    def tasks_ready(self, per_kind: Mapping[str, int]) -> None:
        counts = {k: n for k, n in per_kind.items() if n > 0}
        if counts:
            self._sim_wake(counts)

    def notify(self) -> None:
        self._sim_wake(None)


@dataclass(eq=False)
class _Run:
    """A simulated attempt on a worker."""

    lease: TaskLease
    started: float
    frames: list[int]
    next_frame: int = 0
    cancelled: bool = False
    uploaded: dict[int, str] = field(default_factory=dict)
    frame_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.lease.task_id, self.lease.attempt)


@dataclass(eq=False)
class _Poll:
    """A long poll the coordinator holds open (the sync route's wait)."""

    sync_id: int
    request: Any  # SyncRequest
    held: int
    response: SyncResponse
    timeout: _Handle | None = None


@dataclass(eq=False)
class _Worker:
    spec: WorkerSpec
    row: sa.Row | None = None
    state: WorkerState | None = None
    alive: bool = False
    runs: dict[Key, _Run] = field(default_factory=dict)
    wake: _Handle | None = None
    poll: _Poll | None = None
    steps_at: tuple[float, int] = (0.0, 0)


class Simulation:
    """One render job on one simulated farm over a fresh coordinator database."""

    def __init__(self, database_url: str, data_dir: Path, job: FarmJob,
                 workers: list[WorkerSpec], settings: Mapping[str, Any]) -> None:
        self.clock = SimClock()
        self.events = Events(self.clock)
        self.settings = CoordinatorSettings(data_dir=data_dir, database_url=database_url,
                                            **settings)
        self.svc: Services = build_services(self.settings, clock=self.clock)
        self.svc.notifier = _SimNotifier(self._schedule_wake)
        ensure_admin(self.svc)
        admin = (self.settings.data_dir / "admin-token").read_text().strip()
        self.join_token = (self.settings.data_dir / "join-token").read_text().strip()
        with self.svc.transaction() as conn:
            user = q.user_by_token_hash(conn, hash_token(admin), self.clock())
        self.caller = Caller(user.id, user.name, user.is_admin)
        self.job = job
        self.workers = [_Worker(spec) for spec in workers]
        self.waiting: deque[_Worker] = deque()  # long polls, first come first woken
        self.job_id = 0
        self.finished = False
        self.syncs = self.reaps = self.lost_leases = self.frames_rendered = 0
        self.first_frames: list[int] = []
        self.rendered_at: list[tuple[float, int]] = []  # (simulated time, frame) uploaded
        self.assembled: int | None = None
        self.error: str | None = None

    # ------------------------------------------------------------ the run

    async def run(self, max_seconds: float) -> RunResult:
        started = time.perf_counter()
        self.job_id = self._submit()
        submitted = self.clock()
        for worker in self.workers:
            spec = worker.spec
            self.events.at(submitted + spec.joins_at, functools.partial(self._join, worker))
            if spec.vanishes_at is not None:
                self.events.at(submitted + spec.vanishes_at,
                               functools.partial(self._vanish, worker))
        self.events.at(submitted + self.settings.reaper_seconds, self._reap)
        await self.events.run(submitted + max_seconds, lambda: self.finished)
        result = self._result(submitted)
        result.real_seconds = time.perf_counter() - started
        self.svc.engine.dispose()
        return result

    def _submit(self) -> int:
        scene = BLEND_HEADER + b"\0" * 4096
        sha = self.svc.blobs.write_bytes(scene)
        with self.svc.transaction() as conn:
            blobs.record_user_blobs(conn, self.caller.user_id, {sha: len(scene)},
                                    self.clock())
        frames = self.job.frames
        params = {"scene": sha, "frames": f"{frames[0]}-{frames[-1]}", **self.job.params}
        info = jobs.submit(self.svc, self.caller, JobSubmit(kind="render", params=params,
                                                            name="farm bench"))
        return info.id

    def _reap(self) -> None:
        self.reaps += 1
        self.lost_leases += leasing.reap(self.svc)
        with self.svc.transaction() as conn:
            row = q.get_job(conn, self.job_id)
        if row is not None and JobState(row.state).finished:
            self.finished = True
        else:
            self.events.at(self.clock() + self.settings.reaper_seconds, self._reap)

    # ------------------------------------------------------------ workers

    def _join(self, worker: _Worker) -> None:
        caps = Capabilities(cpu_cores=8, ram_bytes=16 * 2**30, kinds=["render"],
                            blender_version=BLENDER_VERSION, slots=1)
        answer = leasing.register(self.svc, RegisterRequest(
            join_token=self.join_token, name=worker.spec.name, capabilities=caps))
        with self.svc.transaction() as conn:
            worker.row = q.worker_by_token_hash(conn, hash_token(answer.worker_token))
        worker.state = WorkerState(1, sync_seconds=answer.heartbeat_seconds,
                                   lease_seconds=answer.lease_seconds, now=self.clock())
        worker.alive = True
        self._step(worker)

    def _vanish(self, worker: _Worker) -> None:
        worker.alive = False
        if worker.wake is not None:
            worker.wake.cancel()
        for run in worker.runs.values():
            run.cancelled = True
        worker.runs.clear()
        if worker.poll is not None and worker.poll.timeout is not None:
            worker.poll.timeout.cancel()
        worker.poll = None
        if worker in self.waiting:
            self.waiting.remove(worker)

    def _step(self, worker: _Worker) -> None:
        """What the worker's loop does on an event: timers, then its decisions until it
        has none, then a timer for the next one."""
        if not worker.alive or worker.state is None:
            return
        now = self.clock()
        at, count = worker.steps_at
        worker.steps_at = (now, count + 1 if at == now else 1)
        if worker.steps_at[1] > SAME_TIME_STEPS:
            raise RuntimeError(f"worker {worker.spec.name} keeps stepping at t={now}")
        state = worker.state
        state.tick(now)
        while worker.alive:
            instructions = state.decide(now)
            if not instructions:
                break
            for instruction in instructions:
                if isinstance(instruction, Start):
                    self._start(worker, instruction.lease)
                elif isinstance(instruction, Stop):
                    self._stop(worker, (instruction.task_id, instruction.attempt))
                elif isinstance(instruction, Send):
                    self._sync(worker, instruction)
        if worker.wake is not None:
            worker.wake.cancel()
            worker.wake = None
        wake = state.wake_at()
        if wake is not None and worker.alive:
            worker.wake = self.events.at(wake, lambda: self._step(worker))

    def _sync(self, worker: _Worker, send: Send) -> None:
        """``POST /workers/sync`` as the route runs it: the exchange, waking others for
        what it requeued, and an empty answer held open as a long poll."""
        assert worker.row is not None and worker.state is not None
        request = send.request
        self.syncs += 1
        done = sync.exchange(self.svc, worker.row, request)
        if done.ready:
            self.svc.notifier.tasks_ready(done.ready)
        if done.changed_unknown:
            self.svc.notifier.notify()
        wait = min(request.wait_seconds, self.settings.long_poll_seconds,
                   self.settings.lease_seconds / 2)
        if wait > 0 and not request.leaving and done.empty and done.live:
            poll = _Poll(send.sync_id, request, done.held, done.response)
            poll.timeout = self.events.at(self.clock() + wait,
                                          lambda: self._poll_over(worker, poll))
            worker.poll = poll
            self.waiting.append(worker)
            return
        worker.state.answered(send.sync_id, done.response, self.clock())

    def _schedule_wake(self, counts: dict[str, int] | None) -> None:
        self.events.at(self.clock(), lambda: self._wake(counts))

    def _wake(self, counts: dict[str, int] | None) -> None:
        """Woken long polls claim again (``sync.poll``), first come first woken, about as
        many as tasks became ready; one that finds nothing waits again at the back."""
        budget = None if counts is None else sum(counts.values())
        queue, again = list(self.waiting), []
        self.waiting.clear()  # polls that begin while these claim are not woken by this
        while queue and (budget is None or budget > 0):
            worker = queue.pop(0)
            poll = worker.poll
            if poll is None or worker.row is None or worker.state is None:
                continue
            if budget is not None:
                budget -= 1
            leases, live = sync.poll(self.svc, worker.row, poll.request)
            if not leases and live:
                again.append(worker)
                continue
            self._answer_poll(worker, poll, leases)
        self.waiting = deque([*queue, *self.waiting, *again])

    def _poll_over(self, worker: _Worker, poll: _Poll) -> None:
        if worker.poll is poll:
            if worker in self.waiting:
                self.waiting.remove(worker)
            self._answer_poll(worker, poll, [])

    def _answer_poll(self, worker: _Worker, poll: _Poll, leases: list[TaskLease]) -> None:
        assert worker.state is not None
        if poll.timeout is not None:
            poll.timeout.cancel()
        worker.poll = None
        poll.response.tasks = leases
        worker.state.answered(poll.sync_id, poll.response, self.clock())
        self._step(worker)

    # ------------------------------------------------------------ the runner

    def _start(self, worker: _Worker, lease: TaskLease) -> None:
        now = self.clock()
        role = lease.payload.get("role")
        frames = [int(f) for f in lease.payload.get("frames", [])] if role == "chunk" else []
        run = _Run(lease, now, frames)
        worker.runs[run.key] = run
        if role == "chunk" and frames:
            first = now + self.job.startup_seconds + self._frame_time(worker, frames[0])
            self.events.at(first, lambda: self._frame_done(worker, run))
        else:
            self.events.at(now + self.job.assemble_seconds,
                           lambda: self._assembled(worker, run))

    def _frame_time(self, worker: _Worker, frame: int) -> float:
        return worker.spec.frame_seconds * self.job.cost[frame]

    def _stop(self, worker: _Worker, key: Key) -> None:
        """The coordinator said stop (or the lease is lost): the run ends now and its
        report is dropped by the state machine."""
        assert worker.state is not None
        run = worker.runs.pop(key, None)
        if run is None:
            return
        run.cancelled = True
        worker.state.finished(AttemptReport(task_id=key[0], attempt=key[1], outcome="failed",
                                            reason="stopped"), self.clock() - run.started)

    async def _frame_done(self, worker: _Worker, run: _Run) -> None:
        if not worker.alive or run.cancelled or worker.row is None or worker.state is None:
            return
        now = self.clock()
        frame = run.frames[run.next_frame]
        lease = run.lease
        data = (f"frame {frame} of job {lease.job_id}, task {lease.task_id} attempt "
                f"{lease.attempt} on {worker.spec.name}\n").encode()
        sha = hashlib.sha256(data).hexdigest()
        path = frame_output_path(frame, "png")
        try:
            await blobs.receive(self.svc, worker.row, sha, _once(data), declared=len(data),
                                attempt=attempt_header(lease.task_id, lease.attempt))
            leasing.add_output(self.svc, worker.row, lease.task_id, lease.attempt,
                               OutputRequest(path=path, sha256=sha, size=len(data)))
        except PilotError as exc:  # the chunk fails as run_chunk does on an upload error
            self._finish(worker, run, AttemptReport(
                task_id=lease.task_id, attempt=lease.attempt, outcome="failed",
                reason=f"uploading {path}: {exc}", retryable=True))
            return
        self.frames_rendered += 1
        if len(self.first_frames) < 10:
            self.first_frames.append(frame)
        self.rendered_at.append((now, frame))
        run.uploaded[frame] = sha
        run.frame_seconds[str(frame)] = round(self._frame_time(worker, frame), 3)
        run.next_frame += 1
        total = len(run.frames)
        worker.state.progress(run.key, run.next_frame / total,
                              f"frame {frame} done ({run.next_frame}/{total})", [])
        if run.next_frame < total:
            nxt = run.frames[run.next_frame]
            self.events.at(now + self._frame_time(worker, nxt),
                           lambda: self._frame_done(worker, run))
            return
        self._finish(worker, run, AttemptReport(
            task_id=lease.task_id, attempt=lease.attempt, outcome="completed", result={
                "frames": {str(f): s for f, s in sorted(run.uploaded.items())},
                "blender": BLENDER_VERSION, "engine": "CYCLES", "fps": 24.0,
                "size": [1920, 1080], "frame_seconds": run.frame_seconds,
                "seconds": round(now - run.started, 3)}))

    def _assembled(self, worker: _Worker, run: _Run) -> None:
        """The assembly reads the job's frames as the real one does and checks each
        expected frame is there once (``match_frames``' rule)."""
        if not worker.alive or run.cancelled or worker.row is None:
            return
        lease = run.lease
        try:
            rows = leasing.job_outputs(self.svc, worker.row, lease.task_id, lease.attempt,
                                       FRAMES_PREFIX)
        except PilotError as exc:
            self._finish(worker, run, AttemptReport(task_id=lease.task_id,
                                                    attempt=lease.attempt, outcome="failed",
                                                    reason=str(exc)))
            return
        found = Counter(_frame_of(r.path) for r in rows)
        expected = [int(f) for f in lease.payload.get("frames", [])]
        if any(found[f] != 1 for f in expected):
            self.error = "the assembly did not find every frame exactly once"
        self.assembled = sum(1 for f in expected if found[f] == 1)
        self._finish(worker, run, AttemptReport(
            task_id=lease.task_id, attempt=lease.attempt, outcome="completed",
            result={"frames": self.assembled, "fps": 24.0}))

    def _finish(self, worker: _Worker, run: _Run, report: AttemptReport) -> None:
        assert worker.state is not None
        if worker.runs.pop(run.key, None) is None:
            return
        worker.state.finished(report, self.clock() - run.started)
        self._step(worker)

    # ------------------------------------------------------------ the figures

    def _result(self, submitted: float) -> RunResult:
        with self.svc.transaction() as conn:
            job = q.get_job(conn, self.job_id)
            made, won = copy_queries.copy_counts(conn, self.job_id)
        assert job is not None
        tasks = jobs.tasks(self.svc, self.caller, self.job_id)
        outputs = jobs.outputs(self.svc, self.caller, self.job_id)
        chunks = [t for t in tasks if t.name != "assemble video"]
        done = [t for t in chunks if t.state == TaskState.DONE]
        ends = [t.finished_at for t in done if t.finished_at is not None]
        credited: Counter[int] = Counter()
        for t in done:
            credited.update(int(f) for f in (t.result or {}).get("frames", {}))
        listed = Counter(_frame_of(o.path) for o in outputs if o.path.startswith(FRAMES_PREFIX))
        makespan = max(ends) - submitted if ends and len(ends) == len(chunks) else math.nan
        state = JobState(job.state)
        return RunResult(
            job_state=str(state), tasks=len(chunks), makespan=makespan,
            job_seconds=(job.finished_at - submitted) if state.finished and job.finished_at
            else None,
            failed_tasks=sum(1 for t in tasks if t.state == TaskState.FAILED),
            lost_leases=self.lost_leases, frames_rendered=self.frames_rendered,
            frames_credited=credited, frames_listed=listed, frames_assembled=self.assembled,
            syncs=self.syncs, reaps=self.reaps,
            error=self.error or (None if state == JobState.COMPLETED else
                                 f"the job ended {state}: {job.error}" if state.finished
                                 else "the job did not finish in the simulated time"),
            first_frames=self.first_frames, backups_made=made, backups_won=won,
            rendered_at=[(t - submitted, f) for t, f in self.rendered_at])


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _frame_of(path: str) -> int:
    """``frames/0012.png`` -> 12; -1 for anything else under the prefix."""
    stem = path.removeprefix(FRAMES_PREFIX).split(".", 1)[0]
    return int(stem) if stem.isdigit() else -1
