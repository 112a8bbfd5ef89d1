"""Wake-ups between the coordinators of one farm on PostgreSQL (``LISTEN``/``NOTIFY``): what
one coordinator's ``ReadyNotifier`` is told (tasks of some kinds became ready, or
something changed) is sent on a channel, and every other coordinator wakes its own long
polls for it, so a worker waiting on coordinator A gets work submitted through B at
once instead of at its next re-check. Only a wake-up travels (kinds and counts); what
a woken poll gets is decided by its claim, in the database, as always.

Two threads per coordinator, each with a connection of its own outside the pool: one
sends (``pg_notify``, queued so that no caller waits on it, bursts sent as one), one
listens. Both reconnect with a bounded back-off while the database is away; meanwhile
the long polls' re-check still covers the gap. Other databases have no such channel:
there the re-check is the only way (a farm of several coordinators runs on PostgreSQL).
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
from collections import Counter
from typing import Any

import sqlalchemy as sa

from parallel_pilot.coordinator.services.context import ReadyNotifier

log = logging.getLogger("pilot.farm_bus")

CHANNEL = "pilot_ready"
LISTEN_TICK_SECONDS = 1.0  # how often the listener looks up from its wait (to stop; a stop
# also sends itself a message, so the listener ends at once)
RETRY_MIN_SECONDS, RETRY_MAX_SECONDS = 0.5, 10.0  # reconnect back-off
_ALL = "*"  # payload key: something changed, kinds unknown


class FarmBus:
    """The channel of one coordinator process (``start``/``stop`` with the app)."""

    def __init__(self, engine: sa.Engine, notifier: ReadyNotifier) -> None:
        self.engine, self.notifier = engine, notifier
        self.me = secrets.token_hex(8)  # its own messages come back: they are skipped
        self._outbox: queue.SimpleQueue[dict[str, int] | None | _Stop] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @staticmethod
    def applies(engine: sa.Engine) -> bool:
        return engine.dialect.name == "postgresql"

    def start(self) -> None:
        self.notifier.relay = self._outbox.put
        for name, target in (("farm-bus-send", self._send), ("farm-bus-listen", self._listen)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.notifier.relay = None
        self._stopping.set()
        self._outbox.put(_STOP)  # the sender tells the listener (and ends)
        for thread in self._threads:
            thread.join(LISTEN_TICK_SECONDS * 3)

    # ------------------------------------------------------------ threads

    def _send(self) -> None:
        def once(conn: Any) -> None:
            while True:
                batch = [self._outbox.get()]
                while True:  # what queued meanwhile goes in the same message
                    try:
                        batch.append(self._outbox.get_nowait())
                    except queue.Empty:
                        break
                wakes = [b for b in batch if not isinstance(b, _Stop)]
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, _payload(self.me, wakes)))
                if len(wakes) < len(batch):
                    return  # stopped: that message was the listener's cue
        self._connected(once)

    def _listen(self) -> None:
        def once(conn: Any) -> None:
            conn.execute(f"LISTEN {CHANNEL}")
            while not self._stopping.is_set():
                for note in conn.notifies(timeout=LISTEN_TICK_SECONDS):
                    self._received(note.payload)
                    if self._stopping.is_set():
                        return
        self._connected(once)

    def _connected(self, run: Any) -> None:
        """``run(connection)`` with a fresh autocommit DBAPI connection, again after the
        database dropped it, until stopped."""
        delay = RETRY_MIN_SECONDS
        while not self._stopping.is_set():
            raw = None
            try:
                raw = self.engine.raw_connection()
                conn = raw.dbapi_connection
                assert conn is not None
                conn.autocommit = True
                delay = RETRY_MIN_SECONDS
                run(conn)
            except Exception as exc:  # the database restarting, a dropped connection
                if self._stopping.is_set():
                    return
                log.warning("the farm channel lost its database connection (%s); "
                            "again in %.1f s", type(exc).__name__, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            finally:
                if raw is not None:
                    raw.invalidate()  # never back into the pool: it listens, or autocommits

    def _received(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            sender, kinds = str(message["from"]), message["kinds"]
            counts = {str(k): int(n) for k, n in kinds.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignored a malformed message on %s", CHANNEL)
            return
        if sender == self.me:
            return
        if counts.pop(_ALL, 0):
            self.notifier.notify(relay=False)
        if counts:
            self.notifier.tasks_ready(counts, relay=False)


class _Stop:
    """The outbox's last item."""


_STOP = _Stop()


def _payload(me: str, batch: list[dict[str, int] | None]) -> str:
    """One message for a burst: kinds and counts summed, ``*`` if any said "anything"."""
    total: Counter[str] = Counter()
    for counts in batch:
        if counts is None:
            total[_ALL] = 1
        else:
            total.update(counts)
    return json.dumps({"from": me, "kinds": dict(total)})
