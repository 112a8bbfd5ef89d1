"""How many units (frames) a worker should get of a task the coordinator may cut: pure,
no I/O (``chunking.py`` reads what it needs and applies the answer).

What is known is the chunks of the job already finished, each timed on the coordinator's
clock from its lease to its report (``FinishedChunk``): ``seconds = startup + units x
seconds_per_unit(worker)``. The start-up (Blender starting, the scene loading, the report's
way back) is one figure for the job, fitted from the workers that finished chunks of
different sizes (``estimate``); each worker's seconds per unit is what its chunks took
beyond it. The rule (``units_for``):

* a chunk should take ``target_seconds`` on its worker, start-up included:
  ``(target - startup) / seconds_per_unit``; a worker not measured on the job yet gets
  ``NEW_WORKER_SHARE`` of that at the job's mean speed, and with nothing measured at all
  ``FIRST_UNITS``;
* toward the end no chunk is longer than ``TAIL_SHARE`` of this worker's share of the
  units nobody holds yet, shares by speed among the workers holding the job's tasks
  (guided self-scheduling weighted by speed: chunks shrink as the job ends, so the
  workers finish together);
* at least one unit, at most what the task has.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FIRST_UNITS = 2  # units of a first chunk when nothing of the job was measured yet
NEW_WORKER_SHARE = 0.5  # of a target-long chunk at the job's mean speed, for a new worker
TAIL_SHARE = 1.0  # of its speed's share of the units not yet leased, a worker gets at most
MIN_SECONDS_PER_UNIT = 1e-3  # a floor on a measured speed (a chunk reported at once)


@dataclass(frozen=True)
class FinishedChunk:
    """A chunk of the job a worker finished: its units and lease-to-report seconds."""

    worker_id: int
    units: int
    seconds: float


@dataclass(frozen=True)
class Speeds:
    """What the finished chunks of a job say."""

    startup: float = 0.0  # seconds a chunk takes besides its units (0 until measured)
    per_unit: dict[int, float] = field(default_factory=dict)  # worker -> seconds per unit

    @property
    def mean_per_unit(self) -> float | None:
        """Seconds per unit at the mean speed (units per second) of the measured workers."""
        if not self.per_unit:
            return None
        return len(self.per_unit) / sum(1.0 / s for s in self.per_unit.values())


def estimate(chunks: Iterable[FinishedChunk]) -> Speeds:
    """The job's start-up and each worker's seconds per unit, by least squares of
    ``seconds = startup + units x per_unit[worker]`` (one start-up, a speed per worker).
    Only a worker that finished chunks of different sizes tells the start-up apart from
    its speed; until one has, the start-up is taken as 0 (speeds come out slow by it)."""
    by_worker: dict[int, list[FinishedChunk]] = defaultdict(list)
    for chunk in chunks:
        if chunk.units > 0 and chunk.seconds >= 0:
            by_worker[chunk.worker_id].append(chunk)
    if not by_worker:
        return Speeds()
    # for a given startup S, per_unit(w) = (A - S B) / C (A = sum u d, B = sum u, C = sum
    # u^2); the residual of each chunk is then linear in S: y - S x
    num = den = 0.0
    for done in by_worker.values():
        a = sum(c.units * c.seconds for c in done)
        b = sum(c.units for c in done)
        cc = sum(c.units * c.units for c in done)
        for c in done:
            x = 1.0 - c.units * b / cc
            y = c.seconds - c.units * a / cc
            num += x * y
            den += x * x
    shortest = min(c.seconds for done in by_worker.values() for c in done)
    startup = min(max(num / den, 0.0), shortest) if den > 1e-9 else 0.0
    per_unit = {}
    for worker, done in by_worker.items():
        work = sum(c.seconds for c in done) - startup * len(done)
        per_unit[worker] = max(work / sum(c.units for c in done), MIN_SECONDS_PER_UNIT)
    return Speeds(startup, per_unit)


@dataclass(frozen=True)
class Running:
    """A task of the job another worker holds now."""

    worker_id: int
    units: int
    elapsed: float  # seconds since it was leased


def units_for(worker_id: int, *, available: int, speeds: Speeds, target_seconds: float,
              unleased: int, running: Sequence[Running]) -> int:
    """Units of a task of ``available`` units that ``worker_id`` should keep: ``unleased``
    is the job's units nobody holds (this task's included), ``running`` what the other
    workers hold of the job now (see the module docstring)."""
    if available <= 0:
        return 0
    mean = speeds.mean_per_unit
    if mean is None:
        return max(1, min(available, FIRST_UNITS,
                          math.floor(TAIL_SHARE * unleased / (1 + len(running)))))
    startup = speeds.startup
    mine = speeds.per_unit.get(worker_id)
    pace = {w: _per_unit(speeds, w, mean, running) for w in {r.worker_id for r in running}}
    my_pace = mine if mine is not None else mean
    farm = 1.0 / my_pace + sum(1.0 / p for p in pace.values())
    in_hand = sum(max(0.0, r.units - max(0.0, r.elapsed - startup) / pace[r.worker_id])
                  for r in running)
    horizon = (unleased + in_hand) / farm  # seconds until the job's units are done
    budget = max(target_seconds - startup, 0.0)
    wanted = budget / mine if mine is not None else NEW_WORKER_SHARE * budget / mean
    tail = (TAIL_SHARE * horizon - startup) / my_pace
    return max(1, min(available, math.floor(min(wanted, tail))))


def _per_unit(speeds: Speeds, worker_id: int, mean: float, running: Sequence[Running]) -> float:
    """A worker's seconds per unit: measured, else the job's mean, but no less than its
    running task shows (a worker still on its first task after a long time is slow)."""
    known = speeds.per_unit.get(worker_id)
    if known is not None:
        return known
    shown = max((max(0.0, r.elapsed - speeds.startup) / r.units for r in running
                 if r.worker_id == worker_id and r.units > 0), default=0.0)
    return max(mean, shown)
