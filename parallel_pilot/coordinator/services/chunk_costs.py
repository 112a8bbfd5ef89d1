"""What a job's finished chunks say, fitted: the start-up a task costs, each worker's pace
and each unit's (frame's) cost. Pure, no I/O; ``chunk_sizes.py`` sizes chunks with it.

A chunk's time on the coordinator's clock, from its lease to its report, is a start-up
(Blender starting, the scene loading, the report's way back: one figure for the job) and
then its units, each taking ``cost(unit) x pace(worker)``:
``seconds = startup + pace(worker) x sum of cost(unit)``. Frames of one shot differ in
cost, and neighbouring frames alike (a camera move, a character entering the frame), so
a worker's pace is not what its chunks took per frame: a worker that rendered the cheap
frames would look fast and be given too much of the expensive ones at the end. So both
are fitted together (``estimate``):

* where the coordinator saw each unit's output arrive (a render posts every frame as it
  finishes: ``task_outputs.created_at``, its own clock), the gaps between a chunk's
  outputs are its units' times, the first less the part of the start-up before it;
  elsewhere a chunk's time beyond its start-up is shared among its units by cost;
* paces from where two workers' units meet along the keys (a range cut at lease time
  is followed by the next worker's head, a spread frame by the range after it): the
  ``NEIGHBOURS`` units either side cost alike, so the ratio of their times is the ratio
  of the two paces; least squares over every meeting, in logs, each worker drawn a
  little (``ANCHOR_WEIGHT``) toward its time over its units' cost as fitted so far;
* costs: a unit's cost is a straight line fitted to ``time / pace`` of the units within
  ``h`` keys of it, drawn toward the job's mean (1.0) by ``PRIOR_WEIGHT`` units' worth,
  ``h`` the width that predicts each seen unit best from the others (leave-one-out: no
  width is assumed of the scene); costs are scaled to a mean of 1.0 over the units
  seen, so a pace is seconds per mean unit;
* the start-up: the least-squares fit of ``seconds = startup + units x pace`` over
  chunks of different sizes (what the module did before costs) until a chunk of more
  than one unit reported its outputs; then what those chunks took before their first
  output beyond that unit's time, plus after their last output (medians). Start-up,
  paces and costs are fitted in ``FIT_ROUNDS`` turns.

What this cannot know: a frame's own noise (two neighbouring frames differ by what they
show), which bounds how well a pace is known from a few chunks (on the bench's farm,
about 5 % at mid-job against 10 % with every frame taken alike).

The spread-first plan (``kinds/render/spread.py``) makes this work early: the job's first
frames sample the whole range on many workers, so costs are known along the shot, and
pace is told apart from cost, long before the end.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MIN_SECONDS_PER_UNIT = 1e-3  # a floor on a measured pace (a chunk reported at once)
PRIOR_WEIGHT = 1.0  # units' worth of the job's mean cost a unit's cost is drawn toward
WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # neighbourhoods (in keys) a cost may mean
FIT_ROUNDS = 3  # turns of start-up, paces, costs
NEIGHBOURS = 4  # units each side of a meeting of two workers' units that are compared
NEIGHBOUR_GAP = 4  # keys apart two workers' units may be and still count as neighbours
ANCHOR_WEIGHT = 0.05  # of a meeting, what a worker's own mean pace weighs in its pace
MIN_COST = 0.05  # a floor on a fitted cost (a straight line may dip below 0 at a gap)


@dataclass(frozen=True)
class FinishedChunk:
    """A chunk of the job a worker finished: its units and lease-to-report seconds; where
    known, the units' keys (frame numbers, in the chunk's order) and the seconds from its
    lease to each unit's output (in the same order)."""

    worker_id: int
    units: int
    seconds: float
    keys: tuple[int, ...] = ()
    marks: tuple[float, ...] = ()

    @property
    def marked(self) -> bool:
        """Whether every unit's output time is known and says when the unit ended: each
        after the lease, none after the report, no two at once (outputs posted together,
        with the report or in a batch, say nothing of each unit's time)."""
        return (len(self.marks) == len(self.keys) == self.units > 0
                and all(0.0 < m <= self.seconds + 1e-6 for m in self.marks)
                and len(set(self.marks)) == self.units)


class _Sums:
    """Units seen (key, value), sorted by key, with prefix sums, for fits over the units
    within a width of a key."""

    def __init__(self, units: Sequence[tuple[int, float]]) -> None:
        ordered = sorted(units)
        self.keys = [k for k, _ in ordered]
        # prefix sums of 1, x, x^2, r, x r with x = key - the first key (small numbers)
        self.origin = self.keys[0] if self.keys else 0
        self.sums: list[tuple[float, float, float, float, float]] = [(0.0,) * 5]
        n = x1 = x2 = r1 = xr = 0.0
        for k, r in ordered:
            x = float(k - self.origin)
            n, x1, x2, r1, xr = n + 1, x1 + x, x2 + x * x, r1 + r, xr + x * r
            self.sums.append((n, x1, x2, r1, xr))

    def window(self, key: int, width: int) -> tuple[float, float, float, float, float]:
        """Sums of 1, x, x^2, r, x r over the units within ``width`` of ``key``, x = the
        unit's key - ``key``."""
        lo = bisect.bisect_left(self.keys, key - width)
        hi = bisect.bisect_right(self.keys, key + width)
        a, b = self.sums[lo], self.sums[hi]
        n, x1, x2, r1, xr = (b[i] - a[i] for i in range(5))
        d = float(key - self.origin)  # shift x to the key: x' = x - d
        return n, x1 - n * d, x2 - 2 * d * x1 + n * d * d, r1, xr - d * r1


def _local(n: float, x1: float, x2: float, r1: float, xr: float) -> float:
    """The value at x = 0 of the straight line fitted to the sums (``_Sums.window``) and
    ``PRIOR_WEIGHT`` units of the job's mean (1.0) at x = 0; their mean where the units
    cannot fix a slope (fewer than three, or all at one key)."""
    n, r1 = n + PRIOR_WEIGHT, r1 + PRIOR_WEIGHT
    det = n * x2 - x1 * x1
    if n - PRIOR_WEIGHT < 3 or det <= 1e-9 * max(n * x2, 1.0):
        return r1 / n
    return (x2 * r1 - x1 * xr) / det


@dataclass(frozen=True)
class UnitCosts:
    """Each unit's cost, a smooth fit of the units seen (see the module docstring): a unit
    never seen costs what its seen neighbours say, and 1.0 far from any."""

    seen: _Sums | None = None  # the units seen: (key, time / pace)
    width: int = 0  # the neighbourhood a cost is fitted over (keys either side)
    scale: float = 1.0  # divides the fit, so the seen units' mean cost is 1.0

    def __call__(self, key: int) -> float:
        if self.seen is None or not self.seen.keys:
            return 1.0
        return max(_local(*self.seen.window(key, self.width)), MIN_COST) / self.scale

    def total(self, keys: Iterable[int]) -> float:
        return sum(self(k) for k in keys)


UNIFORM = UnitCosts()


@dataclass(frozen=True)
class Speeds:
    """What the finished chunks of a job say."""

    startup: float = 0.0  # seconds a chunk takes besides its units (0 until measured)
    per_unit: dict[int, float] = field(default_factory=dict)  # worker -> seconds a mean unit
    cost: UnitCosts = UNIFORM  # unit key -> its cost (1.0: the mean)

    @property
    def mean_per_unit(self) -> float | None:
        """Seconds per unit at the mean speed (units per second) of the measured workers."""
        if not self.per_unit:
            return None
        return len(self.per_unit) / sum(1.0 / s for s in self.per_unit.values())


def estimate(chunks: Iterable[FinishedChunk]) -> Speeds:
    """The job's start-up, each worker's pace and each unit's cost (module docstring).
    Chunks that say nothing of their units' keys fit as units of equal cost."""
    done = [c for c in chunks if c.units > 0 and c.seconds >= 0]
    base = _startup_and_paces(done)
    keyed = [c for c in done if len(c.keys) == c.units]
    if not keyed:
        return base
    marked = [c for c in keyed if c.marked]
    after = statistics.median(c.seconds - max(c.marks) for c in marked) if marked else 0.0
    shortest = min(c.seconds for c in done)
    startup, cost, per_unit = base.startup, UNIFORM, base.per_unit
    width: int | None = None  # chosen in the first turn, kept after
    for _ in range(FIT_ROUNDS):
        before = max(0.0, startup - after)
        times = [_unit_times(c, startup, before, cost) for c in keyed]
        seen = [(k, t, c.worker_id) for c, ts in zip(keyed, times, strict=True)
                for k, t in zip(c.keys, ts, strict=True)]
        per_unit = _neighbour_paces(seen, _paces(done, keyed, times, startup, cost))
        cost = _fit_costs([(k, t / per_unit[w]) for k, t, w in seen], width)
        width = cost.width
        per_unit = {w: p * cost.scale for w, p in per_unit.items()}
        firsts = [c.marks[i] - cost(c.keys[i]) * per_unit[c.worker_id]
                  for c in marked if c.units > 1
                  for i in [min(range(c.units), key=c.marks.__getitem__)]]
        if firsts:
            startup = min(max(statistics.median(firsts) + after, 0.0), shortest)
    return Speeds(startup, per_unit, cost)


def _startup_and_paces(chunks: Sequence[FinishedChunk]) -> Speeds:
    """One start-up and a pace per worker, by least squares of ``seconds = startup +
    units x pace[worker]`` (units of equal cost). Only a worker that finished chunks of
    different sizes tells the start-up apart from its pace; until one has, the start-up
    is taken as 0 (paces come out slow by it)."""
    by_worker: dict[int, list[FinishedChunk]] = defaultdict(list)
    for chunk in chunks:
        by_worker[chunk.worker_id].append(chunk)
    if not by_worker:
        return Speeds()
    # for a given startup S, pace(w) = (A - S B) / C (A = sum u d, B = sum u, C = sum
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


def _unit_times(chunk: FinishedChunk, startup: float, before: float,
                cost: UnitCosts) -> list[float]:
    """Seconds each of the chunk's units took (in key order): the gaps between its
    outputs where it reported them, else its time beyond the start-up shared by cost."""
    if chunk.marked:
        order = sorted(range(chunk.units), key=lambda i: chunk.marks[i])
        times = [0.0] * chunk.units
        last = before
        for i in order:
            times[i] = max(chunk.marks[i] - last, 0.0)
            last = max(last, chunk.marks[i])
        return times
    work = max(chunk.seconds - startup, 0.0)
    costs = [cost(k) for k in chunk.keys]
    whole = sum(costs)
    return [work * c / whole for c in costs]


def _paces(done: Sequence[FinishedChunk], keyed: Sequence[FinishedChunk],
           times: Sequence[Sequence[float]], startup: float,
           cost: UnitCosts) -> dict[int, float]:
    """Each worker's seconds per unit: its units' time over their cost as fitted so far
    (a chunk without keys counts as units of cost 1.0)."""
    seconds: dict[int, float] = defaultdict(float)
    costs: dict[int, float] = defaultdict(float)
    timed = {id(c): ts for c, ts in zip(keyed, times, strict=True)}
    for c in done:
        ts = timed.get(id(c))
        if ts is None:
            seconds[c.worker_id] += max(c.seconds - startup, 0.0)
            costs[c.worker_id] += c.units
        else:
            seconds[c.worker_id] += sum(ts)
            costs[c.worker_id] += cost.total(c.keys)
    return {w: max(seconds[w] / costs[w], MIN_SECONDS_PER_UNIT) for w in seconds}


def _neighbour_paces(seen: Sequence[tuple[int, float, int]],
                     anchor: dict[int, float]) -> dict[int, float]:
    """Paces from where two workers' units meet along the keys: the units either side of
    a meeting cost alike, so the ratio of their times is the ratio of the two paces
    (``NEIGHBOURS`` units a side). Least squares of ``log pace`` over every meeting,
    each worker drawn toward ``anchor`` (its time over its units' cost) by
    ``ANCHOR_WEIGHT``, which alone decides a worker that meets no other."""
    runs: list[tuple[int, list[tuple[int, float]]]] = []  # (worker, [(key, log time)])
    for key, seconds, worker in sorted(seen):
        if seconds <= 0:
            continue
        if runs and runs[-1][0] == worker and key - runs[-1][1][-1][0] <= NEIGHBOUR_GAP:
            runs[-1][1].append((key, math.log(seconds)))
        else:
            runs.append((worker, [(key, math.log(seconds))]))
    workers = sorted(anchor)
    index = {w: i for i, w in enumerate(workers)}
    size = len(workers)
    matrix = [[0.0] * size for _ in range(size)]
    rhs = [0.0] * size
    for w in workers:
        i = index[w]
        matrix[i][i] += ANCHOR_WEIGHT
        rhs[i] += ANCHOR_WEIGHT * math.log(anchor[w])
    for (wa, left), (wb, right) in itertools.pairwise(runs):
        if wa == wb or right[0][0] - left[-1][0] > NEIGHBOUR_GAP \
                or wa not in index or wb not in index:
            continue
        a, b = left[-NEIGHBOURS:], right[:NEIGHBOURS]
        gap = sum(t for _, t in a) / len(a) - sum(t for _, t in b) / len(b)
        weight = 1.0 / (1.0 / len(a) + 1.0 / len(b))
        i, j = index[wa], index[wb]  # (log pace a - log pace b - gap)^2, weighted
        matrix[i][i] += weight
        matrix[j][j] += weight
        matrix[i][j] -= weight
        matrix[j][i] -= weight
        rhs[i] += weight * gap
        rhs[j] -= weight * gap
    logs = _solve(matrix, rhs)
    return {w: max(math.exp(logs[index[w]]), MIN_SECONDS_PER_UNIT) for w in workers}


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """``matrix x = rhs`` by Gaussian elimination (the matrix is symmetric and positive
    definite: no pivoting needed)."""
    n = len(rhs)
    for col in range(n):
        pivot = matrix[col][col]
        for row in range(col + 1, n):
            factor = matrix[row][col] / pivot
            if factor:
                line, top = matrix[row], matrix[col]
                for k in range(col, n):
                    line[k] -= factor * top[k]
                rhs[row] -= factor * rhs[col]
    x = [0.0] * n
    for row in range(n - 1, -1, -1):
        x[row] = (rhs[row] - sum(matrix[row][k] * x[k] for k in range(row + 1, n))) \
            / matrix[row][row]
    return x


def _fit_costs(seen: Sequence[tuple[int, float]], width: int | None = None) -> UnitCosts:
    """Costs from units seen (key, time / pace): a straight line through the units within
    ``width`` (None: the width that predicts each seen unit best from the others,
    leave-one-out), then scaled to a mean of 1.0 over the units seen."""
    if not seen:
        return UNIFORM
    sums = _Sums(seen)
    keys = sums.keys
    if width is None:
        width = _best_width(sums, seen)
    fitted = UnitCosts(sums, width)
    scale = sum(fitted(k) for k in keys) / len(keys)
    return UnitCosts(sums, width, scale if scale > 0 else 1.0)


def _best_width(sums: _Sums, seen: Sequence[tuple[int, float]]) -> int:
    """The width whose line through the other units predicts each seen unit best."""
    keys = sums.keys
    span = max(keys[-1] - keys[0], 1)
    best: tuple[float, int] | None = None
    for width in (w for w in WIDTHS if w <= span):
        error = 0.0
        for k, r in seen:
            n, x1, x2, r1, xr = sums.window(k, width)
            error += (r - _local(n - 1, x1, x2, r1 - r, xr)) ** 2
        if best is None or error < best[0]:
            best = (error, width)
    return WIDTHS[0] if best is None else best[1]
