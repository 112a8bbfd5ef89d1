"""How many units (frames) a worker should get of a task the coordinator may cut: pure,
no I/O (``chunking.py`` reads what it needs and applies the answer).

What is known is what the job's finished chunks say (``chunk_costs.estimate``): the
start-up a task costs, each worker's pace (seconds per unit of mean cost) and each unit's
cost; and what the job's other workers hold now (``Running``: how much, since when, how
much of it they reported). The rule (``units_for``):

* **the end everyone reaches together.** Each worker holding the job's tasks is free
  when its task ends (its units left at its pace); the units nobody holds are shared so
  that every worker, this one included, ends at one time ``T``, each paying one more
  start-up (water filling: a worker free after ``T`` less a start-up gets none). This
  worker's *share* is what it renders from now to ``T``;
* **a chunk takes ``target_seconds``**, start-up included, on its worker, so a share of
  several targets is cut into that many equal chunks (never a short one left over); a
  worker not measured on the job yet gets ``NEW_WORKER_SHARE`` of a target at the job's
  mean pace, and with nothing measured at all ``FIRST_UNITS`` units;
* **the last chunk**: a share of no more than 1.5 targets is this worker's last chunk
  of the job: it takes ``TAIL_SHARE`` of it (the rest is left for whoever is free first,
  which absorbs the errors of the estimates), but only once every worker holding the
  job's tasks is measured (a guessed pace gets one target at most). With ``GREEDY`` the
  last round instead gives each unit nobody holds to the worker that would finish it
  first (possibly none to this one: ``units_for`` returns 0 and the claim passes the job
  over); with exact paces and costs that reaches 1.044-1.049 of the bound on the bench
  farm, with the paces fitted today it does worse than ``TAIL_SHARE`` (docs/architecture.md);
* units are counted off the head of the task by their cost (the frames it really holds,
  not a mean frame), to the nearest unit; at least one, at most what the task has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from parallel_pilot.coordinator.services.chunk_costs import (
    FinishedChunk,
    Speeds,
    UnitCosts,
    estimate,
)

__all__ = ["FIRST_UNITS", "NEW_WORKER_SHARE", "TAIL_SHARE", "FinishedChunk", "Running",
           "Speeds", "UnitCosts", "estimate", "finish_time", "units_for"]

FIRST_UNITS = 2  # units of a first chunk when nothing of the job was measured yet
NEW_WORKER_SHARE = 0.5  # of a target-long chunk at the job's mean pace, for a new worker
GREEDY = False  # the last round by earliest finish (module docstring): off, needs exact paces
TAIL_SHARE = 0.7  # of its share up to the common end, a worker's last chunk takes


@dataclass(frozen=True)
class Running:
    """A task of the job another worker holds now."""

    worker_id: int
    units: int
    elapsed: float  # seconds since it was leased
    cost: float | None = None  # its units' cost (None: ``units``, each of cost 1.0)
    left: float | None = None  # the cost of its units not reported yet (None: none was)
    quiet: float = 0.0  # seconds since its last unit was reported (with ``left``)


def units_for(worker_id: int, *, available: int, speeds: Speeds, target_seconds: float,
              running: Sequence[Running], costs: Sequence[float] = (),
              others: Sequence[float] = ()) -> int:
    """Units of a task of ``available`` units that ``worker_id`` should keep (0: none,
    another worker will finish them sooner). ``costs`` are the task's units' costs, head
    first (1.0 each where not given), ``others`` those of the job's other units nobody
    holds, ``running`` what the other workers hold of the job now. See the module
    docstring."""
    if available <= 0:
        return 0
    costs = list(costs[:available]) or [1.0] * available
    unleased = sum(costs) + sum(others)
    mean = speeds.mean_per_unit
    if mean is None:
        return max(1, min(available, FIRST_UNITS,
                          math.floor(unleased / (1 + len(running)))))
    startup = speeds.startup
    mine = speeds.per_unit.get(worker_id)
    my_pace = mine if mine is not None else mean
    budget = max(target_seconds - startup, 0.0)
    wanted = budget / mine if mine is not None else NEW_WORKER_SHARE * budget / mean
    lanes = _lanes(speeds, running)
    end = finish_time(my_pace, speeds, unleased, running)
    share = max(end - startup, 0.0) / my_pace
    chunks = round(share / max(wanted, 1e-9))
    if chunks > 1:  # not this worker's last chunk of the job: equal chunks up to the end
        return max(1, min(available, _count(share / chunks, costs)))
    if mine is None or any(r.worker_id not in speeds.per_unit for r in running):
        # a pace not measured yet is a guess (the first to report are the fast ones):
        # no last round on guesses, one target-long chunk at most
        return max(1, min(available, _count(min(share, wanted), costs)))
    if not lanes or not GREEDY:
        return max(1, min(available, _count(TAIL_SHARE * share, costs)))
    return min(available, _earliest_finish(my_pace, startup, lanes, costs, others))


def _lanes(speeds: Speeds, running: Sequence[Running]) -> list[tuple[float, float]]:
    """(seconds until free, pace) of each other worker holding the job's tasks that is
    not late: one that is may never be free (a vanished worker), so it is not counted
    on to take a unit from this one."""
    mean = speeds.mean_per_unit or 1.0
    lanes = []
    for r in running:
        pace = _pace(speeds, r, mean)
        left = _time_left(r, pace, speeds.startup)
        if left > 0:
            lanes.append((left, pace))
    return lanes


def _earliest_finish(my_pace: float, startup: float, lanes: Sequence[tuple[float, float]],
                     costs: Sequence[float], others: Sequence[float]) -> int:
    """The last round: each unit nobody holds goes to the worker that would finish it
    first (this one now, the others once free, each with one start-up more); this worker
    keeps as much of its task as came to it (0: every unit is done sooner elsewhere)."""
    free = [startup, *(left + startup for left, _ in lanes)]
    paces = [my_pace, *(pace for _, pace in lanes)]
    mine = 0.0
    for cost in [*costs, *others]:
        best = min(range(len(free)), key=lambda i: free[i] + cost * paces[i])
        free[best] += cost * paces[best]
        if best == 0:
            mine += cost
    return _count(mine, costs) if mine > 0 else 0


def finish_time(my_pace: float, speeds: Speeds, unleased: float,
                running: Sequence[Running]) -> float:
    """Seconds from now until the job's units are done if what nobody holds (``unleased``,
    in cost) is shared so that this worker (free now, at ``my_pace``) and every worker
    holding a task of the job end together, each paying one start-up more."""
    mean = speeds.mean_per_unit or my_pace
    startup = speeds.startup
    lanes = [(0.0, my_pace)]
    for r in running:
        pace = _pace(speeds, r, mean)
        lanes.append((_time_left(r, pace, startup), pace))
    lanes.sort()
    # sum over lanes free by T of (T - free - startup) / pace = unleased: solve lane by lane
    rate = offset = 0.0
    for i, (free, pace) in enumerate(lanes):
        rate += 1.0 / pace
        offset += (free + startup) / pace
        end = (unleased + offset) / rate
        if i + 1 == len(lanes) or end <= lanes[i + 1][0] + startup:
            return end
    raise AssertionError("unreachable: the last lane returns")


def _time_left(r: Running, pace: float, startup: float) -> float:
    """Seconds until a running task ends, by its worker's pace (0 when overdue)."""
    if r.left is not None:
        return max(r.left * pace - r.quiet, 0.0)
    cost = r.units if r.cost is None else r.cost
    return max(startup + cost * pace - r.elapsed, 0.0)


def _pace(speeds: Speeds, r: Running, mean: float) -> float:
    """A running worker's seconds per unit: measured, else the job's mean, but no less
    than its running task shows (a worker still on its first task after a long time is
    slow)."""
    known = speeds.per_unit.get(r.worker_id)
    if known is not None:
        return known
    cost = r.units if r.cost is None else r.cost
    shown = max(0.0, r.elapsed - speeds.startup) / cost if cost > 0 else 0.0
    return max(mean, shown)


def _count(take: float, costs: Sequence[float]) -> int:
    """Units off the head whose cost comes nearest ``take`` (a unit counts once ``take``
    covers half of it)."""
    spent, count = 0.0, 0
    for c in costs:
        if spent + c / 2 > take:
            break
        spent += c
        count += 1
    return count
