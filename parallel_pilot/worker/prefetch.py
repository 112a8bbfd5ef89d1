"""How many tasks a worker asks to hold beyond its slots, from what it measured.

Deep for millisecond tasks (each slot covers ``PREFETCH_ROUND_TRIPS`` sync round trips of
work, up to ``PREFETCH_PER_SLOT_MAX``), one per slot for tasks under
``PREFETCH_LONGEST_TASK_SECONDS`` (so a 50 ms task starts without waiting for a round
trip), none for kinds taking longer or not measured yet (a render: another worker may
start it sooner than this one would). The depth is the smallest the recently leased kinds
give, so one slow kind among fast ones keeps it down. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections import deque

from parallel_pilot.core.protocol import MAX_PREFETCH

PREFETCH_PER_SLOT_MAX = 64  # prefetched tasks per slot at most (millisecond tasks)
PREFETCH_ROUND_TRIPS = 2.0  # round trips of work per slot a prefetch should cover
PREFETCH_LONGEST_TASK_SECONDS = 1.0  # kinds taking this long or more get no prefetch
DURATION_WEIGHT = 0.3  # weight of the newest measure in a moving average
RECENT_KINDS = 16  # leases whose kinds decide the depth
ROUND_TRIP_START = 0.005  # seconds assumed for a sync round trip before one is measured


class Prefetch:
    """Durations per kind and the sync round trip, as moving averages; the depth."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.durations: dict[str, float] = {}  # kind -> seconds
        self.round_trip = ROUND_TRIP_START
        self._recent: deque[str] = deque(maxlen=RECENT_KINDS)
        self._depth: int | None = None  # depth(), until what it is made of changes

    def depth(self) -> int:
        """Tasks to hold beyond the slots."""
        if self._depth is None:
            per_slot = min((self._per_slot(kind) for kind in set(self._recent)), default=0)
            self._depth = min(per_slot * self.slots, MAX_PREFETCH)
        return self._depth

    def leased(self, kind: str) -> None:
        full = len(self._recent) == RECENT_KINDS
        if kind not in self._recent or (full and self._recent[0] != kind):
            self._depth = None  # the kinds that decide the depth may change
        self._recent.append(kind)

    def finished(self, kind: str, seconds: float) -> None:
        self.durations[kind] = _moved(self.durations.get(kind), seconds)
        self._depth = None

    def synced(self, seconds: float) -> None:
        """A sync without a long poll took ``seconds`` there and back."""
        self.round_trip = _moved(self.round_trip, seconds)
        self._depth = None

    def _per_slot(self, kind: str) -> int:
        seconds = self.durations.get(kind)
        if seconds is None or seconds >= PREFETCH_LONGEST_TASK_SECONDS:
            return 0
        cover = PREFETCH_ROUND_TRIPS * self.round_trip / max(seconds, 1e-6)
        return max(1, min(PREFETCH_PER_SLOT_MAX, math.ceil(cover)))


def _moved(before: float | None, now: float) -> float:
    return now if before is None else before + DURATION_WEIGHT * (now - before)
