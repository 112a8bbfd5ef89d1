"""The transition tables are the only source of allowed state changes."""

from __future__ import annotations

import pytest

from parallel_pilot.core.states import (
    JOB_TRANSITIONS,
    TASK_TRANSITIONS,
    JobState,
    TaskState,
    check_job_move,
    check_task_move,
    task_sources,
)
from parallel_pilot.errors import InvalidTransition


def test_every_state_has_a_row() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskState)
    assert set(JOB_TRANSITIONS) == set(JobState)


def test_lease_cycle() -> None:
    for a, b in [("ready", "leased"), ("leased", "ready"), ("leased", "done"),
                 ("blocked", "ready"), ("leased", "cancelled")]:
        check_task_move(TaskState(a), TaskState(b))


@pytest.mark.parametrize("a, b", [("done", "ready"), ("blocked", "leased"), ("ready", "done"),
                                  ("done", "failed")])
def test_forbidden_moves(a: str, b: str) -> None:
    with pytest.raises(InvalidTransition, match=f"from {a} to {b}"):
        check_task_move(TaskState(a), TaskState(b))


def test_completed_job_is_final() -> None:
    with pytest.raises(InvalidTransition):
        check_job_move(JobState.COMPLETED, JobState.QUEUED)
    check_job_move(JobState.FAILED, JobState.QUEUED)


def test_sources_used_by_conditional_updates() -> None:
    assert task_sources(TaskState.CANCELLED) == {TaskState.BLOCKED, TaskState.READY,
                                                 TaskState.LEASED}
    assert TaskState.DONE not in task_sources(TaskState.READY)
    assert JobState.COMPLETED.finished and not JobState.RUNNING.finished
