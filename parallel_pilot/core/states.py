"""Job and task lifecycle states, and the one transition table every state write goes through."""

from __future__ import annotations

from enum import StrEnum

from parallel_pilot.errors import InvalidTransition


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in JOB_FINISHED


class TaskState(StrEnum):
    BLOCKED = "blocked"  # waiting for the tasks it depends on
    READY = "ready"  # may be leased
    LEASED = "leased"  # a worker holds it under an attempt
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in TASK_FINISHED


JOB_FINISHED = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
TASK_FINISHED = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset(
        {JobState.RUNNING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
    ),
    # retry of a finished job puts it back in the queue
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}

TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.BLOCKED: frozenset({TaskState.READY, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.READY: frozenset({TaskState.LEASED, TaskState.CANCELLED, TaskState.FAILED}),
    # leased -> ready: lease expired, worker handed it back, or a retryable failure
    TaskState.LEASED: frozenset(
        {TaskState.READY, TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED}
    ),
    TaskState.DONE: frozenset(),
    # retry: a failed or cancelled task goes back to blocked/ready
    TaskState.FAILED: frozenset({TaskState.READY, TaskState.BLOCKED}),
    TaskState.CANCELLED: frozenset({TaskState.READY, TaskState.BLOCKED}),
}


def can_move_task(current: TaskState, target: TaskState) -> bool:
    return target in TASK_TRANSITIONS[current]


def check_task_move(current: TaskState, target: TaskState) -> None:
    if not can_move_task(current, target):
        raise InvalidTransition(f"a task cannot go from {current} to {target}")


def task_sources(target: TaskState) -> frozenset[TaskState]:
    """The states from which a task may move to ``target`` (for conditional UPDATEs)."""
    return frozenset(s for s, targets in TASK_TRANSITIONS.items() if target in targets)


def can_move_job(current: JobState, target: JobState) -> bool:
    return target in JOB_TRANSITIONS[current]


def check_job_move(current: JobState, target: JobState) -> None:
    if not can_move_job(current, target):
        raise InvalidTransition(f"a job cannot go from {current} to {target}")


def job_sources(target: JobState) -> frozenset[JobState]:
    return frozenset(s for s, targets in JOB_TRANSITIONS.items() if target in targets)
