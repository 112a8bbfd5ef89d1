"""The rule that decides whether a running attempt is worth a backup copy on an idle
worker (``services.stragglers.behind``), without a database: too young, late by its
job's or its worker's pace, slow against what the idle worker would take, progress as a
claim that only counts where nothing was measured."""

from __future__ import annotations

from typing import Any

import pytest

from parallel_pilot.coordinator.services.stragglers import Pace, behind
from parallel_pilot.core.settings import CoordinatorSettings

SLOW, FAST, IDLE_SLOW = 1, 2, 3  # worker ids


def settings(**overrides: Any) -> CoordinatorSettings:
    return CoordinatorSettings(backup_min_seconds=60, backup_factor=1.5,
                               backup_after_seconds=600, **overrides)


def test_the_pace_is_the_median_overall_and_per_worker() -> None:
    pace = Pace.of([(SLOW, 800.0), (FAST, 200.0), (FAST, 220.0), (FAST, 240.0), (None, 5.0)])
    assert pace.median == 220.0
    assert pace.by_worker == {SLOW: 800.0, FAST: 220.0}
    assert Pace.of([]).median is None


def test_nothing_finished_yet_only_a_long_run_counts() -> None:
    nothing = Pace.of([])
    s = settings()
    assert behind(599, 0.01, nothing, SLOW, FAST, s) is None
    assert behind(600, None, nothing, SLOW, FAST, s) == 600


def test_too_young_for_any_backup() -> None:
    pace = Pace.of([(FAST, 10.0)])
    assert behind(59, None, pace, SLOW, FAST, settings()) is None
    assert behind(60, None, pace, SLOW, FAST, settings()) == 60


def test_late_by_the_jobs_pace_or_by_its_own() -> None:
    pace = Pace.of([(FAST, 200.0), (FAST, 200.0), (SLOW, 800.0)])
    s = settings()
    # a worker that finished nothing of the job is measured against the job (200 s)
    assert behind(299, None, pace, None, FAST, s) is None
    assert behind(300, None, pace, None, FAST, s) == 300
    # a worker known to take 800 s is late only past 1.5 x 800 s ...
    assert behind(1199, None, pace, SLOW, IDLE_SLOW, s) is None
    assert behind(1200, None, pace, SLOW, IDLE_SLOW, s) == 1200


def test_slow_when_a_copy_here_should_finish_first() -> None:
    pace = Pace.of([(FAST, 200.0), (SLOW, 800.0), (IDLE_SLOW, 700.0)])
    s = settings()
    # ... but 100 s into an 800 s run, a worker that takes 200 s should finish first
    assert behind(100, None, pace, SLOW, FAST, s) == 700
    # not one that takes 700 s itself
    assert behind(100, None, pace, SLOW, IDLE_SLOW, s) is None
    # near its end (left 150 s < 200 s) a copy cannot win
    assert behind(650, None, pace, SLOW, FAST, s) is None


def test_progress_is_a_claim_used_only_where_nothing_was_measured() -> None:
    pace = Pace.of([(FAST, 200.0), (FAST, 200.0), (SLOW, 800.0)])
    s = settings()
    # a worker with no finished task of the job: its progress says 10 % after 100 s
    assert behind(100, 0.1, pace, None, FAST, s) == pytest.approx(900)
    assert behind(100, 0.9, pace, None, FAST, s) is None
    # a worker whose pace was measured: its claim of 99 % does not hide that it is slow
    assert behind(100, 0.99, pace, SLOW, FAST, s) == 700
    # and a claim of 1 % does not make a backup of a run that is on time
    assert behind(700, 0.01, pace, SLOW, FAST, s) is None
