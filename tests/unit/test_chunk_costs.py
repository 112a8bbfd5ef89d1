"""What a job's finished chunks say of its units' costs and its workers' paces
(``coordinator/services/chunk_costs.py``): pure, no database. A frame's time is its cost
times its worker's pace; both are fitted from the chunks, with the frames' output times
where they are known."""

from __future__ import annotations

import math

import pytest

from parallel_pilot.coordinator.services.chunk_costs import (
    UNIFORM,
    FinishedChunk,
    estimate,
)

STARTUP = 10.0


def cost(frame: int) -> float:
    """A shot whose frames get dearer along it, smoothly (0.8 .. 1.2)."""
    return 0.8 + 0.4 * (frame - 1) / 199


def chunk(worker: int, pace: float, frames: range, marked: bool = True) -> FinishedChunk:
    """A chunk as the coordinator sees it: lease to report, and each frame's output."""
    marks, t = [], STARTUP
    for f in frames:
        t += cost(f) * pace
        marks.append(t)
    return FinishedChunk(worker, len(frames), t, tuple(frames),
                         tuple(marks) if marked else ())


# worker 1 (pace 20) renders the cheap start, worker 2 (pace 40) the dear end, and they
# meet in the middle: the spread-first frames and the ranges cut between them
SHOT = [chunk(1, 20.0, range(1, 2)), chunk(2, 40.0, range(100, 101)),
        chunk(1, 20.0, range(2, 60)), chunk(2, 40.0, range(60, 100)),
        chunk(1, 20.0, range(101, 140)), chunk(2, 40.0, range(140, 201))]


def test_paces_are_told_apart_from_the_cost_of_the_frames_rendered() -> None:
    speeds = estimate(SHOT)
    ratio = speeds.per_unit[2] / speeds.per_unit[1]
    assert ratio == pytest.approx(2.0, rel=0.03)
    # each worker's time per frame alone says otherwise: worker 2 rendered dearer frames
    plain = {w: sum(c.seconds - STARTUP for c in SHOT if c.worker_id == w)
             / sum(c.units for c in SHOT if c.worker_id == w) for w in (1, 2)}
    assert plain[2] / plain[1] > 2.1
    assert speeds.startup == pytest.approx(STARTUP, abs=1.0)


def test_a_frame_costs_what_its_neighbours_did_and_a_chunk_is_predicted_from_them() -> None:
    speeds = estimate(SHOT)
    # dear frames cost more than cheap ones, in the ratio of the shot
    assert speeds.cost(190) / speeds.cost(10) == pytest.approx(cost(190) / cost(10), rel=0.05)
    # what a worker would take for frames it never rendered
    predicted = speeds.startup + speeds.per_unit[1] * speeds.cost.total(range(150, 170))
    actual = STARTUP + 20.0 * sum(cost(f) for f in range(150, 170))
    assert predicted == pytest.approx(actual, rel=0.03)


def test_chunks_without_output_times_share_their_time_by_cost() -> None:
    speeds = estimate([chunk(c.worker_id, 20.0 if c.worker_id == 1 else 40.0,
                             range(c.keys[0], c.keys[-1] + 1), marked=False) for c in SHOT])
    assert speeds.per_unit[2] / speeds.per_unit[1] == pytest.approx(2.0, rel=0.1)
    assert all(math.isfinite(speeds.cost(k)) and speeds.cost(k) > 0 for k in range(1, 201))


def test_output_times_that_make_no_sense_are_not_used() -> None:
    late = FinishedChunk(1, 2, 50.0, (1, 2), (10.0, 99.0))  # an output after the report
    assert not late.marked
    assert FinishedChunk(1, 2, 50.0, (1, 2), (30.0, 50.0)).marked
    assert not FinishedChunk(1, 2, 50.0, (1, 2), (30.0,)).marked


def test_without_unit_keys_every_unit_costs_alike() -> None:
    speeds = estimate([FinishedChunk(1, 3, 70.0), FinishedChunk(1, 6, 130.0)])
    assert speeds.cost is UNIFORM and speeds.cost(12345) == 1.0
    assert speeds.startup == pytest.approx(10.0)
    assert speeds.per_unit[1] == pytest.approx(20.0)


def test_a_frame_far_from_any_rendered_costs_the_mean() -> None:
    speeds = estimate(SHOT)
    assert speeds.cost(10_000) == pytest.approx(1.0 / speeds.cost.scale)
    mean = sum(speeds.cost(k) for k in range(1, 201)) / 200
    assert mean == pytest.approx(1.0, rel=0.02)
    # outputs posted together (with the report, or in a batch) say nothing of each unit
    assert not FinishedChunk(1, 2, 50.0, (1, 2), (50.0, 50.0)).marked
    assert not FinishedChunk(1, 2, 50.0, (1, 2), (0.0, 0.0)).marked
