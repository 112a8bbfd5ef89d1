"""What every service needs: the database engine, the blob store, settings, a clock, and
the notifier that wakes long-polling lease requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa

from parallel_pilot.core.settings import CoordinatorSettings
from parallel_pilot.store.blobs import BlobStore


class ReadyNotifier:
    """Wakes waiting lease requests when tasks become ready in this process; callable
    from any thread. Waiters also re-check on a short timeout, which covers tasks made
    ready by another coordinator process."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        loop, event = self._loop, self._event
        if loop is None or event is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # loop closed between the check and the call
            pass

    async def wait(self, timeout: float) -> None:
        if self._event is None:
            await asyncio.sleep(timeout)
            return
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return
        # every waiter has seen this wake-up: arm a new event for the next one
        if self._event is event:
            self._event = asyncio.Event()


@dataclass
class Services:
    engine: sa.Engine
    blobs: BlobStore
    settings: CoordinatorSettings
    clock: Callable[[], float] = time.time
    notifier: ReadyNotifier = field(default_factory=ReadyNotifier)

    @property
    def lock_claims(self) -> bool:
        """Whether claims lock rows (server databases) or rely on BEGIN IMMEDIATE."""
        return self.engine.dialect.name != "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn
