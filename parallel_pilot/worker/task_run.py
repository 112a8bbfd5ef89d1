"""One leased task from start to report: its thread, context, heartbeat and final call.

A ``TaskRun`` builds the task's context, starts its heartbeat, runs the kind, and then
settles the attempt exactly once: ``complete`` with the result, ``fail`` with a reason, or
(when it was stopped) nothing or a ``release``. The agent may settle it instead (a release
on shutdown); ``claim()`` makes sure only one of them does.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from parallel_pilot.core.protocol import CompleteRequest, FailRequest, TaskLease
from parallel_pilot.errors import Conflict, InvalidInput, NotFound, PilotError, ServerUnavailable
from parallel_pilot.kinds import get_kind
from parallel_pilot.worker.cache import BlobCache
from parallel_pilot.worker.context import StopReason, TaskContext
from parallel_pilot.worker.heartbeat import Heartbeat
from parallel_pilot.worker.link import CoordinatorLink

REPORT_RETRY_SECONDS = 600.0  # seconds a final report keeps being retried while unreachable
REPORT_BACKOFF_MAX = 30.0  # seconds between report retries at most
REASON_TRACEBACK_LINES = 15  # lines of traceback kept in a failure reason
MAX_REASON_CHARS = 9000  # characters of a failure reason (the wire allows 10,000)

log = logging.getLogger(__name__)


class TaskRun:
    """One attempt of one task, run in its own thread."""

    def __init__(self, lease: TaskLease, *, link: CoordinatorLink, cache: BlobCache,
                 allowed: Collection[str], lease_seconds: float, leased_at: float,
                 work_root: Path | None, on_finished: Callable[[TaskRun], None],
                 hard_stop: threading.Event, sandbox: bool = False,
                 render_sandbox: bool = False, private_paths: tuple[Path, ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease = lease
        self.link = link
        self.cache = cache
        self.allowed = allowed
        self.lease_seconds = lease_seconds
        self.leased_at = leased_at
        self.work_root = work_root
        self.on_finished = on_finished
        self.hard_stop = hard_stop
        self.sandbox = sandbox
        self.render_sandbox = render_sandbox
        self.private_paths = private_paths
        self.clock = clock
        self.label = f"task {lease.task_id} (job {lease.job_id}, {lease.name})"
        self.ctx: TaskContext | None = None
        self.outcome: str | None = None  # "completed", "failed", "released", "dropped"
        self.early_stop: tuple[StopReason, str] | None = None  # asked before ctx existed
        self._claimed = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._main, name=f"task-{lease.task_id}",
                                       daemon=True)

    # ------------------------------------------------------------ agent side

    def start(self) -> None:
        self.thread.start()

    def claim(self) -> bool:
        """Take the right to settle the attempt; only the first caller gets it."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def stop(self, reason: StopReason, detail: str) -> None:
        with self._lock:
            ctx = self.ctx
            if ctx is None:
                self.early_stop = (reason, detail)
                return
        ctx.request_stop(reason, detail)

    def release(self) -> None:
        """Hand the attempt back without a failure; a refusal (409/404) means it is not
        ours any more, which is fine."""
        try:
            self.link.release(self.lease.task_id, self.lease.attempt)
            self.outcome = "released"
            log.info("%s released", self.label)
        except (Conflict, NotFound) as exc:
            self.outcome = "dropped"
            log.info("%s: release refused (%s)", self.label, exc)
        except Exception as exc:  # unreachable, or the connection is already closed
            self.outcome = "dropped"
            log.warning("%s: could not release (%s); its lease will expire", self.label, exc)

    # ------------------------------------------------------------ task thread

    def _main(self) -> None:
        started = self.clock()
        heartbeat: Heartbeat | None = None
        result: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            ctx = TaskContext(self.lease, self.link, self.cache, self.work_root,
                              sandbox=self.sandbox, render_sandbox=self.render_sandbox,
                              private_paths=self.private_paths)
            with self._lock:
                self.ctx = ctx
                early = self.early_stop
            if early is not None:
                ctx.request_stop(*early)
            heartbeat = Heartbeat(self.lease, ctx, self.link, lease_seconds=self.lease_seconds,
                                  leased_at=self.leased_at, clock=self.clock, label=self.label)
            heartbeat.start()
            result = self._run_kind(ctx)
        except Exception as exc:  # a task's failure must never take the worker down
            error = exc
        finally:
            if heartbeat is not None:
                heartbeat.stop()
                heartbeat.join()
        try:
            self._settle(result, error, self.clock() - started)
        except Exception:
            log.exception("%s: unexpected error while reporting", self.label)
        finally:
            if self.ctx is not None:
                try:
                    self.ctx.close()
                except OSError as exc:
                    log.warning("%s: could not clean up %s: %s", self.label, self.ctx.workdir,
                                exc)
            self.on_finished(self)

    def _run_kind(self, ctx: TaskContext) -> dict[str, Any]:
        kind_name = self.lease.kind
        if kind_name not in self.allowed:
            # not the task's fault: another worker may take it
            raise _NotHere(f"this worker does not run {kind_name!r} tasks "
                           f"(it allows: {', '.join(sorted(self.allowed))})")
        try:
            kind = get_kind(kind_name)
        except InvalidInput as exc:
            raise _NotHere(str(exc)) from None
        if ctx.stop_event.is_set():
            return {}
        result = kind.run(self.lease, ctx)
        if not isinstance(result, dict):
            raise TypeError(f"kind {kind_name!r} returned {type(result).__name__}, not a dict")
        return result

    def _settle(self, result: dict[str, Any] | None, error: BaseException | None,
                seconds: float) -> None:
        ctx = self.ctx
        stop_reason = ctx.stop_reason if ctx is not None else None
        if not self.claim():
            return  # the agent released it already
        lines = ctx.logs.drain() if ctx is not None else []
        if stop_reason is StopReason.COORDINATOR:
            assert ctx is not None
            self.outcome = "dropped"
            log.info("%s dropped after %.1f s: %s", self.label, seconds, ctx.stop_detail)
            return
        if stop_reason is not None:
            # shutting down, or the lease is lost: hand it back (a 409 means it is gone)
            self.release()
            return
        if error is None:
            assert result is not None
            try:
                request = CompleteRequest(result=result, log_lines=lines)
                request.model_dump_json()  # a result that is not JSON fails here, not later
            except Exception as exc:
                error = exc
            else:
                if self._report("complete", lambda: self.link.complete(
                        self.lease.task_id, self.lease.attempt, request)):
                    self.outcome = "completed"
                    log.info("%s done in %.1f s", self.label, seconds)
                return
        assert error is not None
        # InvalidInput from a kind means the task itself is wrong: retrying cannot help
        retryable = not isinstance(error, InvalidInput)
        failure = FailRequest(reason=failure_reason(error), retryable=retryable,
                              log_lines=lines)
        if self._report("fail", lambda: self.link.fail(
                self.lease.task_id, self.lease.attempt, failure)):
            self.outcome = "failed"
            log.info("%s failed after %.1f s%s: %s", self.label, seconds,
                     "" if retryable else " (not retryable)", _first_line(failure.reason))

    def _report(self, what: str, send: Callable[[], object]) -> bool:
        """Send a final report, retrying while the coordinator is unreachable."""
        deadline = self.clock() + REPORT_RETRY_SECONDS
        delay = 1.0
        while True:
            try:
                send()
                return True
            except (Conflict, NotFound) as exc:
                self.outcome = "dropped"
                log.info("%s: %s refused (%s)", self.label, what, exc)
                return False
            except ServerUnavailable as exc:
                if self.clock() >= deadline or self.hard_stop.is_set():
                    self.outcome = "dropped"
                    log.warning("%s: giving up on %s: %s", self.label, what, exc)
                    return False
                log.warning("%s: cannot %s yet (%s); retrying", self.label, what, exc)
                self.hard_stop.wait(delay)
                delay = min(delay * 2, REPORT_BACKOFF_MAX)
            except PilotError as exc:
                self.outcome = "dropped"
                log.warning("%s: %s refused: %s", self.label, what, exc)
                return False


class _NotHere(Exception):
    """This worker cannot run the task; another worker may."""


def failure_reason(error: BaseException) -> str:
    """A ``PilotError``'s message (written for people: a kind's refusal, Blender's reason);
    for anything else, the exception's type and message and the end of its traceback."""
    if isinstance(error, _NotHere | PilotError):
        return str(error)[:MAX_REASON_CHARS]
    head = f"{type(error).__name__}: {error}"
    tb = traceback.format_exception(type(error), error, error.__traceback__)
    tail = "".join(tb).rstrip().splitlines()[-REASON_TRACEBACK_LINES:]
    reason = head + "\n" + "\n".join(tail)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS // 2] + "\n…\n" + reason[-MAX_REASON_CHARS // 2:]
    return reason


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""
