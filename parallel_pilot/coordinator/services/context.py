"""What every service needs: the database engine, the blob store, settings, a clock, the
notifier that wakes long polls when work for them appears, the short-lived caches of the
workers and users behind tokens, and the process's metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa

from parallel_pilot.coordinator.metrics import Metrics
from parallel_pilot.core.settings import CoordinatorSettings
from parallel_pilot.store.blobs import BlobStore

WORKER_CACHE_SECONDS = 3.0  # seconds a token's worker row is reused without a query
WORKER_CACHE_ENTRIES = 10_000  # tokens remembered at most (the oldest are dropped)


class Waiter:
    """One long poll waiting for tasks of some kinds; enlisted before the claim it follows,
    so a task made ready during that claim still wakes it."""

    def __init__(self, notifier: ReadyNotifier, kinds: frozenset[str]) -> None:
        self.kinds = kinds
        self.woken_for: str | None = None  # the kind it was woken for ("" for any)
        self._notifier = notifier
        self._event = asyncio.Event()
        self._used = False
        self._closed = False

    def wake(self, kind: str) -> None:
        self.woken_for = kind
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True when woken, False after ``timeout`` seconds."""
        self._used = True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Leave the queue. A waiter woken but never waiting (its claim found work) passes
        the wake on, so the task it was meant for still wakes someone."""
        if not self._closed:
            self._closed = True
            self._notifier._leave(self, forward=not self._used)


class ReadyNotifier:
    """Wakes long polls when tasks of their kinds become ready in this process, about as
    many as tasks became ready, first come first woken; callable from any thread.
    ``notify()`` (something changed, kinds unknown) wakes every waiter. Waiters also
    re-check on a slow timeout, which covers tasks made ready by another coordinator
    process where nothing tells this one (on PostgreSQL ``services/farm_bus.py`` does)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: deque[Waiter] = deque()
        # tells the farm's other coordinators what became ready (None: nobody to tell)
        self.relay: Callable[[dict[str, int] | None], None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters.clear()

    def enlist(self, kinds: Collection[str]) -> Waiter:
        """A place in the queue (call on the event loop); ``close()`` it when done."""
        waiter = Waiter(self, frozenset(kinds))
        self._waiters.append(waiter)
        return waiter

    def tasks_ready(self, per_kind: Mapping[str, int], *, relay: bool = True) -> None:
        """``per_kind[k]`` tasks of kind k became ready (committed); told to the farm's
        other coordinators too (``relay``, when set: ``services/farm_bus.py``)."""
        counts = {k: n for k, n in per_kind.items() if n > 0}
        if counts:
            self._call(self._wake, dict(counts))
            if relay and self.relay is not None:
                self.relay(counts)

    def notify(self, *, relay: bool = True) -> None:
        """Something changed and what is unknown: every waiter re-checks."""
        self._call(self._wake, None)
        if relay and self.relay is not None:
            self.relay(None)

    def waiting(self) -> int:
        return len(self._waiters)

    def _call(self, fn: Callable[[dict[str, int] | None], None],
              arg: dict[str, int] | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # loop closed between the check and the call
            pass

    def _wake(self, counts: dict[str, int] | None) -> None:
        keep: deque[Waiter] = deque()
        while self._waiters:
            waiter = self._waiters.popleft()
            if counts is None:
                waiter.wake("")
                continue
            kind = next((k for k in sorted(waiter.kinds) if counts.get(k, 0) > 0), None)
            if kind is None:
                keep.append(waiter)
                continue
            waiter.wake(kind)
            counts[kind] -= 1
            if not any(counts.values()):
                break
        keep.extend(self._waiters)
        self._waiters = keep

    def _leave(self, waiter: Waiter, forward: bool) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:  # woken: already out of the queue
            if forward and waiter.woken_for:
                self._wake({waiter.woken_for: 1})


class UserCache:
    """token hash -> (user id, name, is_admin) of a user's API token or web session for a
    few seconds, so a client's requests are not each a query. Emptied whenever this process
    changes what a token may do (a token revoked, a session ended, a user disabled); a
    change made through another coordinator of the farm takes effect within
    ``WORKER_CACHE_SECONDS``; an entry is never used past its token's own expiry (on the
    coordinator's clock, ``now``)."""

    def __init__(self, ttl: float = WORKER_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._users: dict[str, tuple[float, float | None, tuple[int, str, bool]]] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: str, now: float) -> tuple[int, str, bool] | None:
        with self._lock:
            entry = self._users.get(token_hash)
        if entry is None or entry[0] < time.monotonic() \
                or (entry[1] is not None and entry[1] <= now):
            return None
        return entry[2]

    def put(self, token_hash: str, user: tuple[int, str, bool],
            expires_at: float | None) -> None:
        with self._lock:
            if len(self._users) >= WORKER_CACHE_ENTRIES:
                self._users.clear()
            self._users[token_hash] = (time.monotonic() + self.ttl, expires_at, user)

    def clear(self) -> None:
        with self._lock:
            self._users.clear()


class WorkerCache:
    """token hash -> worker row for a few seconds, so a worker's requests are not each a
    query; an entry is dropped when the worker leaves, registers again or is revoked in
    this process, and ages out within WORKER_CACHE_SECONDS otherwise (so a revocation by
    another coordinator process takes effect within that)."""

    def __init__(self, ttl: float = WORKER_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._rows: dict[str, tuple[float, sa.Row]] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> sa.Row | None:
        with self._lock:
            entry = self._rows.get(token_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, token_hash: str, row: sa.Row) -> None:
        with self._lock:
            if len(self._rows) >= WORKER_CACHE_ENTRIES:
                now = time.monotonic()
                self._rows = {h: e for h, e in self._rows.items() if e[0] >= now}
                while len(self._rows) >= WORKER_CACHE_ENTRIES:
                    self._rows.pop(next(iter(self._rows)))
            self._rows[token_hash] = (time.monotonic() + self.ttl, row)

    def forget(self, worker_id: int) -> None:
        with self._lock:
            self._rows = {h: e for h, e in self._rows.items() if e[1].id != worker_id}


@dataclass
class Services:
    engine: sa.Engine
    blobs: BlobStore
    settings: CoordinatorSettings
    clock: Callable[[], float] = time.time
    notifier: ReadyNotifier = field(default_factory=ReadyNotifier)
    worker_cache: WorkerCache = field(default_factory=WorkerCache)
    user_cache: UserCache = field(default_factory=UserCache)
    metrics: Metrics = field(default_factory=Metrics)  # this process's (coordinator/metrics.py)

    @property
    def lock_claims(self) -> bool:
        """Whether claims lock rows (server databases) or rely on BEGIN IMMEDIATE."""
        return self.engine.dialect.name != "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn
