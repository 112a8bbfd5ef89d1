"""``Executor``: a ``concurrent.futures.Executor`` whose calls run on the farm's workers.

    with parallel_pilot.Executor(requirements=("numpy",)) as pool:
        squares = list(pool.map(lambda x: x * x, range(500), chunksize=20))
        future = pool.submit(simulate, alpha=0.3)

Calls become tasks of ``python`` jobs (see ``kinds.python``): ``map`` sends one job with one
task per chunk; ``submit`` calls made within ``batch_seconds`` of each other go into one
job, a task each (so that cancelling a future cancels exactly its task). One background
thread submits the batches, sends cancellations, and polls each open job with a backoff
bounded by ``poll_max``, completing the futures from the tasks' results.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
import warnings
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
from parallel_pilot.core.states import JobState, TaskState

BATCH_SECONDS = 0.02  # submit() calls this close together (seconds) go into one job
MAX_BATCH_CALLS = 10_000  # calls one submit() batch holds at most
POLL_MIN = 0.02  # seconds between polls of a job right after it changed
POLL_MAX = 1.0  # seconds between polls of a job at most (the backoff's bound)
POLL_GROWTH = 1.5  # factor the poll interval grows by while a job does not change
WARN_AFTER = 10.0  # seconds a job may wait untouched before workers are looked at
ERROR_PAUSE = 1.0  # seconds to wait after the coordinator could not be reached
JOB_NAME_CHARS = 200  # a job's name is at most this long (JobSubmit.name)

log = logging.getLogger("pilot.executor")


@dataclass(eq=False)
class _Chunk:
    """Calls of one function that run as one task; ``single`` for a ``submit`` call
    (its future gets the value), else a ``map`` chunk (its future gets the outcomes)."""

    function: Callable[..., Any]
    calls: list[Call]
    single: bool
    future: Future[Any] = field(default_factory=Future)
    job_id: int | None = None
    task_id: int | None = None


@dataclass(eq=False)
class _Job:
    id: int
    open: dict[int, _Chunk]  # task id -> chunk, until its future is done
    seen: tuple[Any, ...] = ()
    interval: float = POLL_MIN
    next_poll: float = 0.0
    submitted_at: float = 0.0


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
    sandbox them in bwrap. A job is named after its function (``simulate``,
    ``Model.step``; ``simulate +2 more`` for a batch of several), unless ``name`` is given.
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
        self._cancels: dict[int, set[int]] = {}
        self._submitting = 0  # jobs being submitted outside the lock
        self._shutdown = False
        self._thread: threading.Thread | None = None
        self._workers_checked = False

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
        with self._cond:
            self._check_open()
            self._submitting += 1
        try:
            if chunks:
                self._submit_job(chunks, raise_errors=True)
        finally:
            with self._cond:
                self._submitting -= 1
        for chunk in chunks:
            chunk.future.add_done_callback(functools.partial(self._future_done, chunk))
        return _results(chunks, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; with ``cancel_futures`` cancel every call not finished (and its
        task on the farm); with ``wait`` return when every future is done."""
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

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pilot-executor",
                                            daemon=True)
            self._thread.start()

    def _submit_job(self, chunks: list[_Chunk], *, raise_errors: bool = False) -> None:
        """One ``python`` job for ``chunks``; their futures are watched from now on."""
        live = [c for c in chunks if not c.future.cancelled()]
        if not live:
            return
        try:
            params, calls_blob = self._encoder.params([(c.function, c.calls) for c in live])
            self.client.upload_bytes(calls_blob)
            info = self.client.submit_python(
                params, name=self.name or job_name([c.function for c in live]),
                priority=self.priority,
                max_attempts=self.max_attempts, require_sandbox=self.require_sandbox)
            tasks = self.client.tasks(info.id)
        except BaseException as exc:
            if raise_errors:
                raise
            for chunk in live:
                _fail(chunk.future, exc)
            return
        job = _Job(info.id, {}, submitted_at=time.monotonic())
        with self._cond:
            for task, chunk in zip(tasks, live, strict=True):
                chunk.job_id, chunk.task_id = info.id, task.id
                if chunk.future.cancelled():
                    self._cancels.setdefault(info.id, set()).add(task.id)
                elif not chunk.future.done():
                    job.open[task.id] = chunk
            if job.open:
                self._jobs[info.id] = job
            self._start_thread()
            self._cond.notify_all()

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
            if chunk.task_id is not None and chunk.job_id is not None:
                job = self._jobs.get(chunk.job_id)
                if job is not None and job.open.pop(chunk.task_id, None) is not None:
                    self._cancels.setdefault(chunk.job_id, set()).add(chunk.task_id)
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
                    self._submit_job(batch)
                for job_id, task_ids in cancels.items():
                    self._send_cancel(job_id, task_ids)
                for job in due:
                    self._poll(job)
        finally:
            self._close_client()

    def _next_work(self) -> tuple[list[_Chunk] | None, dict[int, set[int]], list[_Job]]:
        now = time.monotonic()
        batch = None
        if self._pending and (self._shutdown or len(self._pending) >= MAX_BATCH_CALLS
                              or now - self._pending_since >= self.batch_seconds):
            batch, self._pending = self._pending[:MAX_BATCH_CALLS], \
                self._pending[MAX_BATCH_CALLS:]
            self._pending_since = now
        cancels, self._cancels = self._cancels, {}
        due = [j for j in self._jobs.values() if j.next_poll <= now]
        return batch, cancels, due

    def _idle_seconds(self) -> float:
        now = time.monotonic()
        wake = [j.next_poll for j in self._jobs.values()]
        if self._pending:
            wake.append(self._pending_since + self.batch_seconds)
        return max(0.001, min([*wake, now + self.poll_max]) - now)

    def _send_cancel(self, job_id: int, task_ids: set[int]) -> None:
        try:
            self.client.cancel_tasks(job_id, sorted(task_ids))
        except Exception as exc:  # the future is cancelled already; the task may run on
            log.warning("could not cancel tasks of job %d: %s", job_id, exc)

    def _poll(self, job: _Job) -> None:
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
            failed_job = info.error if info.state == JobState.FAILED else None
            for task in tasks:
                with self._cond:
                    chunk = job.open.pop(task.id, None) if task.state.finished else None
                if chunk is not None:
                    self._resolve(chunk, task, failed_job)
            if info.state.finished:
                with self._cond:
                    rest, job.open = list(job.open.values()), {}
                for chunk in rest:
                    _fail(chunk.future, TaskFailed(f"job {job.id} ended {info.state}: "
                                                   f"{info.error or 'no reason given'}"))
        else:
            job.interval = min(self.poll_max, job.interval * POLL_GROWTH)
            if time.monotonic() - job.submitted_at > WARN_AFTER and not info.tasks_done:
                self._warn_without_workers()
        job.next_poll = time.monotonic() + job.interval
        with self._cond:
            if not job.open:
                self._jobs.pop(job.id, None)

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
