"""The heartbeat of one running task: a thread that keeps its lease alive and carries its
progress and log lines to the coordinator, and stops the task when the coordinator says so
or when the lease is lost (heartbeats failing for longer than the lease lasts)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from parallel_pilot.core.protocol import HeartbeatRequest, TaskLease
from parallel_pilot.errors import Conflict, PilotError, TaskNotFound
from parallel_pilot.worker.context import StopReason, TaskContext
from parallel_pilot.worker.link import CoordinatorLink

MIN_HEARTBEAT_SECONDS = 0.01  # seconds between heartbeats at least, whatever a lease says

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Every ``lease.heartbeat_seconds``, report progress and drained log lines."""

    def __init__(self, lease: TaskLease, ctx: TaskContext, link: CoordinatorLink, *,
                 lease_seconds: float, leased_at: float,
                 clock: Callable[[], float] = time.monotonic,
                 label: str = "") -> None:
        super().__init__(name=f"heartbeat-{lease.task_id}", daemon=True)
        self.lease = lease
        self.ctx = ctx
        self.link = link
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.label = label or f"task {lease.task_id}"
        self.interval = max(MIN_HEARTBEAT_SECONDS, lease.heartbeat_seconds)
        self.last_ok = leased_at  # clock() when the lease was last known to be ours
        self.sent = 0
        self._task_over = threading.Event()

    def stop(self) -> None:
        """End the loop (the task is over); ``join()`` afterwards."""
        self._task_over.set()

    def run(self) -> None:
        while not self._task_over.wait(self.interval):
            if not self.beat():
                return

    def beat(self) -> bool:
        """One heartbeat; returns whether to keep beating."""
        progress, message = self.ctx.snapshot()
        lines = self.ctx.logs.drain()
        try:
            answer = self.link.heartbeat(
                self.lease.task_id, self.lease.attempt,
                HeartbeatRequest(progress=progress, message=message, log_lines=lines),
            )
        except (Conflict, TaskNotFound) as exc:
            # StaleAttempt is a Conflict: another attempt holds the task, or it is gone
            self._stop_task(StopReason.COORDINATOR, f"the coordinator refused the attempt: {exc}")
            return False
        except PilotError as exc:
            self.ctx.logs.requeue(lines)
            silent = self.clock() - self.last_ok
            if silent >= self.lease_seconds:
                self._stop_task(StopReason.LEASE_LOST,
                           f"no heartbeat got through for {silent:.0f} s ({exc})")
                return False
            log.debug("%s: heartbeat failed (%s); retrying", self.label, exc)
            return True
        self.sent += 1
        self.last_ok = self.clock()
        if answer.action == "stop":
            self._stop_task(StopReason.COORDINATOR,
                       f"the coordinator said stop: {answer.reason or 'no reason given'}")
            return False
        return True

    def _stop_task(self, reason: StopReason, detail: str) -> None:
        if self.ctx.request_stop(reason, detail) and reason is StopReason.LEASE_LOST:
            # a coordinator's stop is logged once, when the task is dropped
            log.warning("%s: stopping: %s", self.label, detail)
