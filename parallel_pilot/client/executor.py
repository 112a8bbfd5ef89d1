"""``Executor``: a ``concurrent.futures.Executor`` whose calls run on the farm's workers.

    with parallel_pilot.Executor(requirements=("numpy",)) as pool:
        squares = list(pool.map(lambda x: x * x, range(500), chunksize=20))
        future = pool.submit(simulate, alpha=0.3)

Calls become tasks of ``python`` jobs (see ``kinds.python``): ``map`` sends one job with one
task per chunk; a ``submit`` call is sent at once as a job of its own when no send is in
flight, and the calls made while one is go together into the next job, a task each (so
that cancelling a future cancels exactly its task). One background thread sends the jobs
and the cancellations; each open job is followed through its stream of finished tasks
(``Client.finished_tasks``: results pushed by the coordinator), completing the futures as
results arrive. A job whose stream dropped is polled with a backoff bounded by
``poll_max`` until the stream is reopened from where it left off.

The ``concurrent.futures`` contract: what was submitted (functions, bound methods and
their objects, arguments) is dropped once it is sent, so nothing outlives its future
because it was submitted; calls submitted before ``shutdown(wait=False)`` or just before
the interpreter exits are still sent (an exit hook waits up to ``EXIT_SEND_SECONDS`` for
the sends; the calls then run on the farm without this process); ``submit`` after
``shutdown`` or once the interpreter is exiting (an ``atexit`` handler) raises
``RuntimeError``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import secrets
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from parallel_pilot.client.python_calls import (
    SHARE_BYTES,
    Call,
    CallEncoder,
    TaskFailed,
    chunk_outcomes,
    outcome_value,
    task_failed,
)
from parallel_pilot.client.sdk import Client
from parallel_pilot.core.protocol import TaskInfo
from parallel_pilot.core.requirements import RequirementsLike, requirements_from
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.errors import JobNotFound

BATCH_SECONDS = 0.0  # a burst's first submit() waits this long (s) for more calls; 0: none
MAX_BATCH_CALLS = 10_000  # calls one submit() batch holds at most
MAX_STREAMS = 16  # open jobs followed through a stream at once; the others are polled
STREAM_SECONDS = 300.0  # one stream of finished tasks lasts at most this, then is reopened
RESUME_PAUSE = 1.0  # seconds before a dropped stream is reopened (its job is polled meanwhile)
POLL_MIN = 0.02  # seconds between polls of a job right after it changed
POLL_MAX = 1.0  # seconds between polls of a job at most (the backoff's bound)
POLL_GROWTH = 1.5  # factor the poll interval grows by while a job does not change
WARN_AFTER = 10.0  # seconds a job may wait untouched before workers are looked at
ERROR_PAUSE = 1.0  # seconds to wait after the coordinator could not be reached
EXIT_SEND_SECONDS = 60.0  # the interpreter's exit waits this long for calls not yet sent
JOB_NAME_CHARS = 200  # a job's name is at most this long (JobSubmit.name)

log = logging.getLogger("pilot.executor")


@dataclass(eq=False)
class _Chunk:
    """Calls of one function that run as one task; ``single`` for a ``submit`` call
    (its future gets the value), else a ``map`` chunk (its future gets the outcomes).
    ``function`` and ``calls`` are dropped once the job is sent."""

    function: Callable[..., Any] | None
    calls: list[Call]
    single: bool
    future: Future[Any] = field(default_factory=Future)
    job_id: int | None = None
    index: int | None = None  # its task's place in the job (the job's chunks, in order)


@dataclass(eq=False)
class _Job:
    id: int
    open: dict[int, _Chunk]  # task index -> chunk, until its future is done
    seen: tuple[Any, ...] = ()
    interval: float = POLL_MIN
    next_poll: float = 0.0
    submitted_at: float = 0.0
    streaming: bool = False  # a follower's stream is open: no polling
    failed_error: str | None = None  # the job's error once it failed
    any_finished: bool = False


class _Exit:
    """The interpreter's exit: live executors send what they hold, then submit refuses."""

    def __init__(self) -> None:
        self.live: weakref.WeakSet[Executor] = weakref.WeakSet()
        self.exiting = False
        self._registered = False
        self._lock = threading.Lock()

    def enlist(self, executor: Executor) -> None:
        with self._lock:
            if not self._registered:
                self._registered = True
                try:  # runs before non-daemon threads are joined and before atexit
                    register = threading._register_atexit  # type: ignore[attr-defined]
                except AttributeError:  # not CPython's threading: the atexit hook
                    atexit.register(self.run)
                else:
                    try:
                        register(self.run)
                    except RuntimeError:  # the interpreter is exiting already
                        self.exiting = True
            self.live.add(executor)

    def run(self) -> None:
        self.exiting = True
        deadline = time.monotonic() + EXIT_SEND_SECONDS
        for executor in list(self.live):
            executor._flush(deadline)


_EXIT = _Exit()


class Executor(_BaseExecutor):
    """Run Python calls on a Parallel Pilot farm, as ``concurrent.futures`` does locally.

    ``server`` and ``token`` default to ``PILOT_SERVER``/``PILOT_TOKEN`` and the file
    ``pilot login`` writes (or pass ``client``). ``requirements`` names the modules the
    function needs on a worker (``("numpy", "scipy")``); a worker without one fails the
    task with a message naming it. Functions and arguments are serialised with cloudpickle,
    so lambdas, closures and notebook functions work; the worker must run the same Python
    major.minor. Arguments whose pickle exceeds ``share_bytes`` are uploaded once as blobs.
    An exception raised by a call is raised by ``future.result()`` with its own type when
    it can be unpickled here (else ``RemoteError``), the remote traceback added to it; a
    task that fails on the farm raises ``TaskFailed``. Only workers started with
    ``--allow python`` run these calls; ``require_sandbox`` keeps them on workers that
    sandbox them in bwrap and that an admin marked trusted (a sandbox is otherwise only
    the worker's claim). ``requires`` is what a worker must have to run the calls, in
    the ``--requires`` syntax (``"gpu,vram>=8G,ram>=16G,tag=studio-a"``), as a
    ``Requirements`` or a dict of its fields (``requirements`` keeps its old meaning, the
    Python packages). A job is named after its function (``simulate``,
    ``Model.step``; ``simulate +2 more`` for a batch of several), unless ``name`` is given.
    A ``submit`` call is sent at once unless a send is in flight (then it goes with the
    next one), or after ``batch_seconds`` when that is given.
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        requirements: Iterable[str] = (),
        client: Client | None = None,
        name: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        require_sandbox: bool = False,
        requires: RequirementsLike = None,
        batch_seconds: float = BATCH_SECONDS,
        share_bytes: int = SHARE_BYTES,
        poll_max: float = POLL_MAX,
    ) -> None:
        self._owns_client = client is None
        self.client = client if client is not None else Client(server, token)
        self.name = name
        self.priority = priority
        self.max_attempts = max_attempts
        self.require_sandbox = require_sandbox
        self.requires = requirements_from(requires)  # a bad text fails here, not later
        self.batch_seconds = batch_seconds
        self.poll_max = poll_max
        # one random session per Executor: workers reuse a child process across its jobs
        self._encoder = CallEncoder(self.client.upload_bytes, share_bytes=share_bytes,
                                    packages=requirements, timeout_seconds=timeout_seconds,
                                    session=secrets.token_hex(16))
        self._cond = threading.Condition()
        self._pending: list[_Chunk] = []
        self._pending_since = 0.0
        self._jobs: dict[int, _Job] = {}
        self._cancels: dict[int, set[int]] = {}  # job id -> indexes of tasks to cancel
        self._task_ids: dict[int, list[int]] = {}  # job id -> its task ids, once needed
        self._submitting = 0  # jobs being submitted outside the lock (map, the loop)
        self._streams = 0  # follower threads running
        self._shutdown = False
        self._thread: threading.Thread | None = None
        self._workers_checked = False
        _EXIT.enlist(self)

    # ------------------------------------------------------------ the Executor API

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` on the farm; returns its ``Future``."""
        chunk = _Chunk(fn, [(args, kwargs)], single=True)
        chunk.future.add_done_callback(functools.partial(self._future_done, chunk))
        with self._cond:
            self._check_open()
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(chunk)
            self._start_thread()
            self._cond.notify_all()
        return chunk.future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """``fn`` over the items, as one job of one task per ``chunksize`` items; results
        are yielded in order. An exception raised by a call is raised when its result is
        reached; ``timeout`` (seconds, from this call) bounds the wait."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        end = None if timeout is None else time.monotonic() + timeout
        calls: list[Call] = [(args, {}) for args in zip(*iterables, strict=False)]
        chunks = [_Chunk(fn, calls[i:i + chunksize], single=False)
                  for i in range(0, len(calls), chunksize)]
        del calls
        with self._cond:
            self._check_open()
            self._submitting += 1
        try:
            if chunks:
                self._submit_job(chunks, raise_errors=True)
        finally:
            with self._cond:
                self._submitting -= 1
                self._cond.notify_all()
        for chunk in chunks:
            chunk.future.add_done_callback(functools.partial(self._future_done, chunk))
        return _results(chunks, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; with ``cancel_futures`` cancel every call not finished (and its
        task on the farm); with ``wait`` return when every future is done. Without
        ``wait`` the calls submitted so far are still sent (and run)."""
        with self._cond:
            self._shutdown = True
            chunks = list(self._pending) + [c for j in self._jobs.values()
                                            for c in j.open.values()]
            self._cond.notify_all()
        if cancel_futures:
            for chunk in chunks:
                chunk.future.cancel()
        thread = self._thread
        if thread is None:
            self._close_client()
        elif wait:
            thread.join()

    # ------------------------------------------------------------ submitting

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new calls after shutdown")
        if _EXIT.exiting:
            raise RuntimeError("cannot schedule new calls after interpreter shutdown")

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pilot-executor",
                                            daemon=True)
            self._thread.start()

    def _flush(self, deadline: float) -> None:
        """At the interpreter's exit: wait (until ``deadline``) for what is not sent yet."""
        with self._cond:
            self._cond.notify_all()
            while self._pending or self._submitting:
                if self._thread is None or not self._thread.is_alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("%d call(s) were not sent before the interpreter exited",
                                len(self._pending))
                    break
                self._cond.wait(left)

    def _submit_job(self, chunks: list[_Chunk], *, raise_errors: bool = False) -> None:
        """One ``python`` job for ``chunks``; their futures are followed from now on."""
        live = [c for c in chunks if not c.future.cancelled()]
        for chunk in chunks:
            if chunk.future.cancelled():
                chunk.function, chunk.calls = None, []
        if not live:
            return
        try:
            params, calls_blob = self._encoder.params(
                [(c.function, c.calls) for c in live])  # type: ignore[misc]
            name = self.name or job_name([c.function for c in live])  # type: ignore[misc]
            for chunk in live:  # sent as bytes: the objects are not held any longer
                chunk.function, chunk.calls = None, []
            if calls_blob is not None:  # None: the calls travel in the parameters
                self.client.upload_bytes(calls_blob)
            info = self.client.submit_python(
                params, name=name, priority=self.priority,
                max_attempts=self.max_attempts, require_sandbox=self.require_sandbox,
                requirements=self.requires)
        except BaseException as exc:
            for chunk in live:
                chunk.function, chunk.calls = None, []
            if raise_errors:
                raise
            for chunk in live:
                _fail(chunk.future, exc)
            return
        job = _Job(info.id, {}, submitted_at=time.monotonic())
        follow = False
        with self._cond:
            for index, chunk in enumerate(live):  # one task per chunk, in plan order
                chunk.job_id, chunk.index = info.id, index
                if chunk.future.cancelled():
                    self._cancels.setdefault(info.id, set()).add(index)
                elif not chunk.future.done():
                    job.open[index] = chunk
            if job.open:
                self._jobs[info.id] = job
                if hasattr(self.client, "finished_tasks") and self._streams < MAX_STREAMS:
                    self._streams += 1
                    job.streaming = follow = True
            self._start_thread()
            self._cond.notify_all()
        if follow:
            threading.Thread(target=self._follow, args=(job,), daemon=True,
                             name=f"pilot-executor-job-{job.id}").start()

    def _warn_without_workers(self) -> None:
        """Once, when a job waits: warn if no online worker allows ``python``."""
        if self._workers_checked:
            return
        self._workers_checked = True
        try:
            workers = self.client.workers()
        except Exception:  # only a hint; the calls are submitted either way
            return
        if not any(w.state in ("idle", "busy") and "python" in w.capabilities.kinds
                   for w in workers):
            warnings.warn(f"no online worker of {self.client.server} allows python tasks; "
                          "the calls wait until one started with --allow python joins",
                          RuntimeWarning, stacklevel=2)

    def _future_done(self, chunk: _Chunk, _future: Future[Any]) -> None:
        """A future was cancelled by its user: cancel its task too (once submitted)."""
        if not chunk.future.cancelled():
            return
        with self._cond:
            if chunk.index is not None and chunk.job_id is not None:
                job = self._jobs.get(chunk.job_id)
                if job is not None and job.open.pop(chunk.index, None) is not None:
                    self._cancels.setdefault(chunk.job_id, set()).add(chunk.index)
                    self._forget_if_done(job)
                    self._cond.notify_all()

    def _forget_if_done(self, job: _Job) -> None:
        """(Under the lock.) A job with no open future is no longer followed."""
        if not job.open:
            self._jobs.pop(job.id, None)
            self._cond.notify_all()

    # ------------------------------------------------------------ the background thread

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    batch, cancels, due = self._next_work()
                    if batch is None and not cancels and not due:
                        if self._shutdown and not self._pending and not self._jobs \
                                and not self._submitting:
                            return
                        self._cond.wait(self._idle_seconds())
                        continue
                    if batch:
                        self._submitting += 1
                try:
                    if batch:
                        self._submit_job(batch)
                finally:
                    if batch:
                        with self._cond:
                            self._submitting -= 1
                            self._cond.notify_all()
                for job_id, indexes in cancels.items():
                    self._send_cancel(job_id, indexes)
                for job in due:
                    self._poll(job)
                self._look_for_workers()
        finally:
            self._close_client()

    def _next_work(self) -> tuple[list[_Chunk] | None, dict[int, set[int]], list[_Job]]:
        now = time.monotonic()
        batch = None
        if self._pending and (self._shutdown or _EXIT.exiting or self.batch_seconds <= 0
                              or len(self._pending) >= MAX_BATCH_CALLS
                              or now - self._pending_since >= self.batch_seconds):
            batch, self._pending = self._pending[:MAX_BATCH_CALLS], \
                self._pending[MAX_BATCH_CALLS:]
            self._pending_since = now
        cancels, self._cancels = self._cancels, {}
        due = [j for j in self._jobs.values() if not j.streaming and j.next_poll <= now]
        return batch, cancels, due

    def _idle_seconds(self) -> float:
        now = time.monotonic()
        wake = [j.next_poll for j in self._jobs.values() if not j.streaming]
        if self._pending:
            wake.append(self._pending_since + self.batch_seconds)
        return max(0.001, min([*wake, now + self.poll_max]) - now)

    def _look_for_workers(self) -> None:
        """A followed job that waits long with nothing finished: are there workers?"""
        if self._workers_checked:
            return
        now = time.monotonic()
        with self._cond:
            waiting = any(j.streaming and not j.any_finished
                          and now - j.submitted_at > WARN_AFTER for j in self._jobs.values())
        if waiting:
            self._warn_without_workers()

    def _send_cancel(self, job_id: int, indexes: set[int]) -> None:
        try:
            ids = self._task_ids.get(job_id)
            if ids is None:  # asked once per job, and only when something is cancelled
                ids = self._task_ids[job_id] = [t.id for t in self.client.tasks(job_id)]
            self.client.cancel_tasks(job_id, sorted(ids[i] for i in indexes))
        except Exception as exc:  # the future is cancelled already; the task may run on
            log.warning("could not cancel tasks of job %d: %s", job_id, exc)

    # ------------------------------------------------------------ following a job

    def _follow(self, job: _Job) -> None:
        """A job's stream of finished tasks, reopened from where it left off when it
        ends or drops (the job is polled while it is down) until no future is open."""
        since: float | None = None
        try:
            while True:
                with self._cond:
                    if not job.open:
                        return
                    job.streaming = True
                try:
                    for event, data in self.client.finished_tasks(job.id, since=since,
                                                                  seconds=STREAM_SECONDS):
                        if event == "job":
                            state, error = data
                            job.failed_error = error if state == JobState.FAILED else None
                        elif event == "tasks":
                            tasks, since = data
                            self._take(job, tasks)
                        elif event == "done":
                            self._end(job)
                            return
                        with self._cond:
                            if not job.open:
                                return
                except JobNotFound as exc:  # deleted, or no longer this user's
                    self._end(job, exc)
                    return
                except Exception as exc:
                    with self._cond:
                        if not job.open:
                            return
                        job.streaming = False  # polled by the loop until reopened
                        job.next_poll = 0.0
                        self._cond.notify_all()
                    log.warning("lost the stream of job %d (%s); polling it", job.id, exc)
                    time.sleep(RESUME_PAUSE)
        finally:
            with self._cond:
                self._streams -= 1
                job.streaming = False
                self._cond.notify_all()

    def _take(self, job: _Job, tasks: list[TaskInfo]) -> None:
        """Complete the futures of finished tasks (each once, whoever saw it first)."""
        for task in tasks:
            if not task.state.finished:
                continue
            job.any_finished = True
            with self._cond:
                chunk = job.open.pop(task.index, None)
            if chunk is not None:
                self._resolve(chunk, task, job.failed_error)
        with self._cond:
            self._forget_if_done(job)

    def _end(self, job: _Job, error: BaseException | None = None) -> None:
        """The job finished (or is gone): futures still open get its end as their error."""
        with self._cond:
            rest, job.open = list(job.open.values()), {}
            self._forget_if_done(job)
        for chunk in rest:
            _fail(chunk.future, error or TaskFailed(
                f"job {job.id} ended: {job.failed_error or 'its task ended without a result'}"))

    def _poll(self, job: _Job) -> None:
        """The fallback while a job's stream is down (or there are too many): the job, and
        its tasks when its counts changed."""
        try:
            info = self.client.job(job.id)
            seen = (info.state, tuple(sorted(info.task_counts.items())))
            changed = seen != job.seen
            tasks = self.client.tasks(job.id) if changed else []
        except Exception as exc:
            log.warning("could not poll job %d: %s", job.id, exc)
            job.next_poll = time.monotonic() + ERROR_PAUSE
            return
        if changed:
            job.seen, job.interval = seen, POLL_MIN
            job.failed_error = info.error if info.state == JobState.FAILED else None
            self._take(job, tasks)
            if info.state.finished:
                with self._cond:
                    rest, job.open = list(job.open.values()), {}
                    self._forget_if_done(job)
                for chunk in rest:
                    _fail(chunk.future, TaskFailed(f"job {job.id} ended {info.state}: "
                                                   f"{info.error or 'no reason given'}"))
        else:
            job.interval = min(self.poll_max, job.interval * POLL_GROWTH)
            if time.monotonic() - job.submitted_at > WARN_AFTER and not info.tasks_done:
                self._warn_without_workers()
        job.next_poll = time.monotonic() + job.interval

    def _resolve(self, chunk: _Chunk, task: TaskInfo, failed_job: str | None) -> None:
        future = chunk.future
        if task.state == TaskState.DONE:
            try:
                outcomes = chunk_outcomes(task.result or {}, self.client.download_bytes)
                if not chunk.single:
                    _set(future, outcomes)
                    return
                value = outcome_value(outcomes[0])
            except BaseException as exc:
                _fail(future, exc)
                return
            _set(future, value)
        elif task.state == TaskState.FAILED:
            _fail(future, task_failed(task))
        elif failed_job is None and task.error and "job failed" not in task.error:
            future.cancel()  # cancelled on the farm (by this client or another one)
        else:
            _fail(future, TaskFailed(f"job {task.job_id} failed: {failed_job or task.error}"))

    def _close_client(self) -> None:
        if self._owns_client:
            self.client.close()


def _results(chunks: list[_Chunk], end: float | None) -> Iterator[Any]:
    """Values in order; cancels the chunks not reached when the iterator is dropped."""
    waiting = list(reversed(chunks))
    del chunks  # only `waiting` holds them, so results reached can be freed
    try:
        while waiting:
            chunk = waiting.pop()
            left = None if end is None else end - time.monotonic()
            for outcome in chunk.future.result(left):
                yield outcome_value(outcome)
    finally:
        for chunk in waiting:
            chunk.future.cancel()


def _set(future: Future[Any], value: Any) -> None:
    try:
        future.set_result(value)
    except InvalidStateError:  # cancelled meanwhile
        pass


def function_name(fn: Callable[..., Any]) -> str:
    """What a person calls ``fn``: its ``__qualname__`` (``Model.step``) without the
    ``<locals>`` of an enclosing function; a ``functools.partial`` by what it wraps."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) \
        or type(fn).__qualname__
    return str(name).rsplit("<locals>.", 1)[-1]


def job_name(functions: Iterable[Callable[..., Any]]) -> str:
    """The default name of a job of these calls: the first function's name, plus how many
    other functions the batch holds (``simulate +2 more``)."""
    distinct = {id(fn): fn for fn in functions}  # two lambdas are two functions
    names = [function_name(fn) for fn in distinct.values()]
    if not names:
        return "python calls"
    more = f" +{len(names) - 1} more" if len(names) > 1 else ""
    return names[0][:JOB_NAME_CHARS - len(more)] + more


def _fail(future: Future[Any], exc: BaseException) -> None:
    try:
        future.set_exception(exc)
    except InvalidStateError:
        pass
