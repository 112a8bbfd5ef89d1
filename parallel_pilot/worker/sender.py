"""A thread that sends the worker's syncs, so the loop never waits on the network.

The loop hands a ``Send`` over and goes on starting attempts and taking results; the
answer (or the failure) comes back as an event in the loop's queue. The worker has two:
one for short syncs, one for idle long polls, which the loop gives up on at a stop while
the other sender carries the leaving sync.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from parallel_pilot.core.protocol import SyncRequest
from parallel_pilot.worker.link import CoordinatorLink


class Sender:
    """Sends ``(sync_id, request)`` pairs one after the other on its own link; puts
    ``("answered", sync_id, response)`` or ``("failed", sync_id, error)`` into ``events``.
    A request is skipped (nothing put) if ``skip()`` says so when its turn comes."""

    def __init__(self, link: CoordinatorLink, events: queue.SimpleQueue[tuple[Any, ...]],
                 name: str, skip: Callable[[], bool] = lambda: False) -> None:
        self.link = link
        self._events = events
        self._skip = skip
        self._queue: queue.SimpleQueue[tuple[int, SyncRequest] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def send(self, sync_id: int, request: SyncRequest) -> None:
        self._queue.put((sync_id, request))

    def close(self) -> None:
        """End the thread after what it sends now; close the link if it is idle (a long
        poll still waiting is abandoned: the process ends it)."""
        self._queue.put(None)
        self._thread.join(0.1)
        if not self._thread.is_alive():
            self.link.close()

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            sync_id, request = item
            if self._skip():
                continue
            try:
                answer = self.link.sync(request)
            except Exception as exc:
                self._events.put(("failed", sync_id, exc))
            else:
                self._events.put(("answered", sync_id, answer))
