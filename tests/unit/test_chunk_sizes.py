"""The adaptive chunk-size rule (``coordinator/services/chunk_sizes.py``): pure, no
database. What the finished chunks of a job say (start-up and each worker's speed), and
how many units a worker keeps of a task it takes."""

from __future__ import annotations

import pytest

from parallel_pilot.coordinator.services.chunk_sizes import (
    FIRST_UNITS,
    NEW_WORKER_SHARE,
    TAIL_SHARE,
    FinishedChunk,
    Running,
    Speeds,
    estimate,
    units_for,
)


def chunks(worker: int, startup: float, per_unit: float, sizes: list[int]) -> list[FinishedChunk]:
    return [FinishedChunk(worker, n, startup + n * per_unit) for n in sizes]


def test_estimate_separates_the_startup_from_each_workers_speed() -> None:
    done = chunks(1, 10.0, 20.0, [1, 5, 12]) + chunks(2, 10.0, 80.0, [1, 3]) \
        + chunks(3, 10.0, 40.0, [6])  # one size only: it says nothing of the start-up
    speeds = estimate(done)
    assert speeds.startup == pytest.approx(10.0)
    assert speeds.per_unit == pytest.approx({1: 20.0, 2: 80.0, 3: 40.0})
    # the mean speed is the mean of units per second, not of seconds per unit
    assert speeds.mean_per_unit == pytest.approx(3 / (1 / 20 + 1 / 80 + 1 / 40))


def test_estimate_with_one_size_per_worker_takes_no_startup() -> None:
    speeds = estimate(chunks(1, 10.0, 20.0, [2]) + chunks(2, 10.0, 50.0, [2]))
    assert speeds.startup == 0.0  # not told apart yet: the speeds carry it
    assert speeds.per_unit == pytest.approx({1: 25.0, 2: 55.0})
    assert estimate([]) == Speeds()


def test_estimate_never_takes_a_startup_longer_than_the_shortest_chunk() -> None:
    # a worker that got faster between its chunks would fit a start-up above its chunk
    speeds = estimate([FinishedChunk(1, 1, 30.0), FinishedChunk(1, 10, 31.0)])
    assert 0.0 <= speeds.startup <= 30.0
    assert all(s > 0 for s in speeds.per_unit.values())


KNOWN = Speeds(startup=10.0, per_unit={1: 20.0, 2: 80.0})


def test_a_fast_worker_gets_more_units_than_a_slow_one_for_the_same_target() -> None:
    args = dict(available=500, speeds=KNOWN, target_seconds=610.0, unleased=5000, running=[])
    assert units_for(1, **args) == 30  # (610 - 10) / 20
    assert units_for(2, **args) == 7  # (610 - 10) / 80, rounded down


def test_nothing_known_gives_a_small_first_chunk_and_a_new_worker_half_a_target() -> None:
    first = units_for(1, available=49, speeds=Speeds(), target_seconds=600.0,
                      unleased=1000, running=[])
    assert first == FIRST_UNITS
    new = units_for(9, available=500, speeds=KNOWN, target_seconds=610.0, unleased=5000,
                    running=[])
    assert new == int(NEW_WORKER_SHARE * 600.0 / KNOWN.mean_per_unit)


def test_chunks_shrink_toward_the_end_so_workers_finish_together() -> None:
    others = [Running(2, 4, 100.0)]  # worker 2 is 90 s into 4 units of 80 s
    big = units_for(1, available=500, speeds=KNOWN, target_seconds=610.0, unleased=5000,
                    running=others)
    end = units_for(1, available=20, speeds=KNOWN, target_seconds=610.0, unleased=20,
                    running=others)
    assert big == 30 and end < 30
    # the two finish the 20 units and worker 2's 2.9 left in this many seconds; worker 1
    # gets TAIL_SHARE of it, start-up out
    horizon = (20 + (4 - 90 / 80)) / (1 / 20 + 1 / 80)
    assert end == int((TAIL_SHARE * horizon - 10.0) / 20.0)
    last = units_for(1, available=3, speeds=KNOWN, target_seconds=610.0, unleased=3,
                     running=[Running(2, 10, 0.0)] * 1 + [Running(3, 10, 0.0)])
    assert last >= 1


def test_at_least_one_unit_and_never_more_than_the_task_has() -> None:
    assert units_for(2, available=500, speeds=KNOWN, target_seconds=5.0, unleased=5000,
                     running=[]) == 1
    assert units_for(1, available=3, speeds=KNOWN, target_seconds=6000.0, unleased=5000,
                     running=[]) == 3
    assert units_for(1, available=1, speeds=KNOWN, target_seconds=6000.0, unleased=1,
                     running=[]) == 1


def test_a_worker_still_on_a_long_first_task_counts_as_slow() -> None:
    # worker 7 has not finished its 1-unit task in 500 s: it is slower than the mean, so
    # the fast worker's share of what is left is larger
    quick = [Running(7, 1, 5.0)]
    stuck = [Running(7, 1, 500.0)]
    args = dict(available=500, speeds=KNOWN, target_seconds=6000.0, unleased=300)
    assert units_for(1, running=stuck, **args) > units_for(1, running=quick, **args)
