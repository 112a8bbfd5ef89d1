"""The adaptive chunk-size rule (``coordinator/services/chunk_sizes.py``): pure, no
database. What the finished chunks of a job say (start-up and each worker's speed), and
how many units a worker keeps of a task it takes."""

from __future__ import annotations

import pytest

from parallel_pilot.coordinator.services import chunk_sizes
from parallel_pilot.coordinator.services.chunk_sizes import (
    FIRST_UNITS,
    NEW_WORKER_SHARE,
    TAIL_SHARE,
    FinishedChunk,
    Running,
    Speeds,
    estimate,
    finish_time,
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
MANY = [1.0] * 5000  # the job's other units nobody holds: far from the end


def test_a_fast_worker_gets_more_units_than_a_slow_one_for_the_same_target() -> None:
    args = dict(available=500, speeds=KNOWN, target_seconds=610.0, others=MANY, running=[])
    assert units_for(1, **args) == pytest.approx(30, abs=1)  # (610 - 10) / 20
    assert units_for(2, **args) == pytest.approx(7, abs=1)  # (610 - 10) / 80


def test_a_share_of_several_targets_is_cut_into_equal_chunks() -> None:
    # 2.5 targets' worth left for worker 1 alone: two chunks of 1.25 targets, no short
    # one left over at the end
    others = [1.0] * (75 - 30)
    kept = units_for(1, available=30, speeds=KNOWN, target_seconds=610.0, others=others,
                     running=[])
    assert kept == 30  # the whole task (30 units); it would keep 37 of a longer one
    kept = units_for(1, available=75, speeds=KNOWN, target_seconds=610.0, others=[],
                     running=[])
    assert kept == pytest.approx(37, abs=1)


def test_nothing_known_gives_a_small_first_chunk_and_a_new_worker_half_a_target() -> None:
    first = units_for(1, available=49, speeds=Speeds(), target_seconds=600.0,
                      others=[1.0] * 1000, running=[])
    assert first == FIRST_UNITS
    new = units_for(9, available=500, speeds=KNOWN, target_seconds=610.0, others=MANY,
                    running=[])
    assert new == pytest.approx(NEW_WORKER_SHARE * 600.0 / KNOWN.mean_per_unit, abs=1)


def test_the_last_chunk_takes_the_tail_share_of_the_way_to_the_common_end() -> None:
    others = [Running(2, 4, 100.0)]  # worker 2 is 90 s into 4 units of 80 s
    end = units_for(1, available=20, speeds=KNOWN, target_seconds=610.0, others=[],
                    running=others)
    # the two finish the 20 units and worker 2's 2.9 left together, each with one more
    # start-up; worker 1 keeps TAIL_SHARE of its part
    left = 4 * 80 + 10 - 100
    end_time = finish_time(20.0, KNOWN, 20, others)
    assert (end_time - 10) / 20 + max(end_time - left - 10, 0) / 80 == pytest.approx(20)
    assert end == round(TAIL_SHARE * (end_time - 10) / 20)
    assert 1 <= end < 20


def test_a_worker_that_would_be_free_after_the_end_gets_no_share() -> None:
    busy = [Running(2, 40, 0.0)]  # worker 2 is busy for 3,210 s more
    assert finish_time(20.0, KNOWN, 10, busy) == pytest.approx(10 + 10 * 20)


def test_units_are_counted_by_their_cost() -> None:
    cheap = units_for(1, available=100, speeds=KNOWN, target_seconds=610.0,
                      costs=[0.5] * 100, others=MANY, running=[])
    dear = units_for(1, available=100, speeds=KNOWN, target_seconds=610.0,
                     costs=[1.5] * 100, others=MANY, running=[])
    assert cheap == pytest.approx(60, abs=2) and dear == pytest.approx(20, abs=1)


def test_no_last_round_on_a_pace_not_measured_yet() -> None:
    # worker 7 has run 15 s of its first unit: it may be fast or slow; worker 1 gets no
    # more than one target even though the job looks nearly done
    guess = [Running(7, 1, 15.0)]
    kept = units_for(1, available=60, speeds=KNOWN, target_seconds=210.0, others=[],
                     running=guess)
    assert kept == pytest.approx(10, abs=1)  # (210 - 10) / 20


def test_at_least_one_unit_and_never_more_than_the_task_has() -> None:
    assert units_for(2, available=500, speeds=KNOWN, target_seconds=5.0, others=MANY,
                     running=[]) == 1
    assert units_for(1, available=3, speeds=KNOWN, target_seconds=6000.0, others=MANY,
                     running=[]) == 3
    assert units_for(1, available=1, speeds=KNOWN, target_seconds=6000.0,
                     running=[]) == 1


def test_a_worker_still_on_a_long_first_task_counts_as_slow() -> None:
    # worker 7 has not finished its 1-unit task in 500 s: it is slower than the mean, so
    # the fast worker's share of what is left is larger
    quick = [Running(7, 1, 5.0)]
    stuck = [Running(7, 1, 500.0)]
    assert finish_time(20.0, KNOWN, 300, stuck) > finish_time(20.0, KNOWN, 300, quick)


def test_the_last_round_by_earliest_finish_leaves_a_unit_to_a_faster_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunk_sizes, "GREEDY", True)
    measured = Speeds(startup=10.0, per_unit={1: 20.0, 2: 80.0, 3: 20.0})
    soon = [Running(3, 3, 60.0, left=1.0, quiet=0.0)]  # worker 3: free in 20 s
    # worker 2 would finish the last unit in 90 s, worker 3 in 20 + 30 s: 2 gets none
    assert units_for(2, available=1, speeds=measured, target_seconds=610.0, running=soon) == 0
    assert units_for(1, available=1, speeds=measured, target_seconds=610.0, running=soon) == 1
    # with work for both, each keeps its part
    assert units_for(2, available=12, speeds=measured, target_seconds=610.0,
                     running=soon) >= 1
