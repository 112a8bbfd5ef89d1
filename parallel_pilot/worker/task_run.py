"""One leased attempt from start to its report, run on one of the worker's slot threads.

A ``TaskRun`` runs the kind in the attempt's ``TaskContext`` and ends with exactly one
``AttemptReport`` (``completed`` with the result, or ``failed`` with a reason), handed to
``on_finished`` once; the worker's state machine decides what becomes of it (sent, or
dropped or handed back when the attempt was stopped). It makes no HTTP call of its own for
the report: only the kind's inputs and outputs go through the context's link.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from parallel_pilot.core.protocol import AttemptReport, TaskLease
from parallel_pilot.errors import InvalidInput, PilotError
from parallel_pilot.kinds import get_kind
from parallel_pilot.worker.cache import BlobCache
from parallel_pilot.worker.context import StopReason, TaskContext
from parallel_pilot.worker.link import CoordinatorLink

REASON_TRACEBACK_LINES = 15  # lines of traceback kept in a failure reason
MAX_REASON_CHARS = 9000  # characters of a failure reason (the wire allows 10,000)
LOG_DONE_SECONDS = 1.0  # attempts taking this long or more get a line in the worker's log

log = logging.getLogger(__name__)


class TaskRun:
    """One attempt of one task; ``execute()`` runs it on the calling (slot) thread."""

    def __init__(self, lease: TaskLease, *, link: CoordinatorLink, cache: BlobCache,
                 gpus: tuple[int, ...] = (),
                 allowed: Collection[str], work_root: Path | None,
                 on_finished: Callable[[TaskRun], None], sandbox: bool = False,
                 render_sandbox: bool = False, private_paths: tuple[Path, ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease = lease
        self.allowed = allowed
        self.on_finished = on_finished
        self.clock = clock
        self.label = f"task {lease.task_id} (job {lease.job_id}, {lease.name})"
        # cheap: the work folder is made only if the kind asks for it
        self.ctx = TaskContext(lease, link, cache, work_root, gpus=gpus, sandbox=sandbox,
                               render_sandbox=render_sandbox, private_paths=private_paths)
        self.report: AttemptReport | None = None  # set once, when the attempt ends
        self.seconds = 0.0  # how long it ran

    @property
    def key(self) -> tuple[int, int]:
        return self.lease.task_id, self.lease.attempt

    def stop(self, reason: StopReason, detail: str) -> None:
        """Ask the kind to stop (it may be running, or not started yet)."""
        self.ctx.request_stop(reason, detail)

    def execute(self) -> None:
        """Run the kind, build the one report, clean up, tell ``on_finished``."""
        started = self.clock()
        result: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            result = self._run_kind()
        except Exception as exc:  # a task's failure must never take the worker down
            error = exc
        self.seconds = self.clock() - started
        try:
            self.report = self._report(result, error)
        finally:
            try:
                self.ctx.close()
            except OSError as exc:
                log.warning("%s: could not clean up its folder: %s", self.label, exc)
            self.on_finished(self)

    def _run_kind(self) -> dict[str, Any]:
        kind_name = self.lease.kind
        if kind_name not in self.allowed:
            # not the task's fault: another worker may take it
            raise _NotHere(f"this worker does not run {kind_name!r} tasks "
                           f"(it allows: {', '.join(sorted(self.allowed))})")
        try:
            kind = get_kind(kind_name)
        except InvalidInput as exc:
            raise _NotHere(str(exc)) from None
        if self.ctx.stop_event.is_set():
            return {}
        result = kind.run(self.lease, self.ctx)
        if not isinstance(result, dict):
            raise TypeError(f"kind {kind_name!r} returned {type(result).__name__}, not a dict")
        return result

    def _report(self, result: dict[str, Any] | None, error: BaseException | None
                ) -> AttemptReport:
        lines = self.ctx.logs.drain()
        stopped = self.ctx.stop_reason
        if stopped is not None:
            log.info("%s stopped after %.1f s: %s", self.label, self.seconds,
                     self.ctx.stop_detail)
        if error is None:
            try:
                report = AttemptReport(task_id=self.lease.task_id, attempt=self.lease.attempt,
                                       outcome="completed", result=result, log_lines=lines)
                report.model_dump_json()  # a result that is not JSON fails here, not later
            except Exception as exc:
                error = exc
            else:
                if self.seconds >= LOG_DONE_SECONDS and stopped is None:
                    log.info("%s done in %.1f s", self.label, self.seconds)
                return report
        # InvalidInput from a kind means the task itself is wrong: retrying cannot help
        retryable = not isinstance(error, InvalidInput)
        reason = failure_reason(error)
        if stopped is None:
            log.info("%s failed after %.1f s%s: %s", self.label, self.seconds,
                     "" if retryable else " (not retryable)", _first_line(reason))
        return AttemptReport(task_id=self.lease.task_id, attempt=self.lease.attempt,
                             outcome="failed", reason=reason, retryable=retryable,
                             log_lines=lines)


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
