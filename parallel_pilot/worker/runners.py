"""The worker's slots as threads: one thread per slot (CPU slots and GPU slots), reused from
task to task.

A millisecond task then costs a queue hand-off, not a thread start. The worker's state
machine never starts more attempts than there are slots, so a started attempt finds a
thread free (or one that is just reporting its last attempt).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from parallel_pilot.worker.task_run import TaskRun

log = logging.getLogger(__name__)


class Runners:
    """``slots`` daemon threads that take ``TaskRun``s from one queue and execute them."""

    def __init__(self, slots: int) -> None:
        self._queue: queue.SimpleQueue[TaskRun | None] = queue.SimpleQueue()
        self._busy = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._main, name=f"slot-{n + 1}",
                                          daemon=True) for n in range(slots)]
        for thread in self._threads:
            thread.start()

    def submit(self, run: TaskRun) -> None:
        self._queue.put(run)

    @property
    def busy(self) -> int:
        """Attempts executing now."""
        with self._lock:
            return self._busy

    def close(self, timeout: float) -> bool:
        """End the threads once their attempts are over; whether all ended in time."""
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _main(self) -> None:
        while True:
            run = self._queue.get()
            if run is None:
                return
            with self._lock:
                self._busy += 1
            try:
                run.execute()
            except Exception:  # execute() reports its own failures; this is a bug
                log.exception("%s: the slot thread failed", run.label)
            finally:
                with self._lock:
                    self._busy -= 1
