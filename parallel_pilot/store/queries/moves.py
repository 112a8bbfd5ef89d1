"""State moves checked against the transition table (``core/states.py``): the one way the
query modules write ``tasks.state`` and ``jobs.state``.

A move is built once, at import, from its target and the source states its statement
means (``task_move(TaskState.DONE, TaskState.LEASED)``: a report completes a leased task);
a source the table does not allow raises ``InvalidTransition`` there, so a statement that
could break the table never loads. Without named sources a move takes every source the
table allows. A statement uses ``move.where`` in its WHERE clause and ``move.values(...)``
for its SET clause, so both halves come from the same checked pair::

    CANCEL = task_move(TaskState.CANCELLED)
    tasks.update().where(tasks.c.job_id == job_id, CANCEL.where).values(**CANCEL.values(...))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from parallel_pilot.core.states import (
    JobState,
    TaskState,
    check_job_move,
    check_task_move,
    job_sources,
    task_sources,
)
from parallel_pilot.store.tables import jobs, tasks

State = TypeVar("State", TaskState, JobState)

MOVES: list[Move[Any]] = []  # every move built, in import order (tests check them all)


@dataclass(frozen=True)
class Move(Generic[State]):
    """A checked move of ``column`` from ``sources`` to ``target``."""

    column: sa.Column[Any]
    target: State
    sources: tuple[State, ...]

    @property
    def where(self) -> sa.ColumnElement[bool]:
        """``state = source`` (one source) or ``state IN (sources)``."""
        if len(self.sources) == 1:
            return self.column == str(self.sources[0])
        return self.column.in_([str(s) for s in self.sources])

    def values(self, **values: Any) -> dict[str, Any]:
        """The SET values of the move: ``state`` is its target."""
        if "state" in values:
            raise ValueError("a move sets the state itself")
        return {"state": self.target, **values}


def task_move(target: TaskState, *from_: TaskState) -> Move[TaskState]:
    """A task's move to ``target`` from the named states (each checked against the
    table), or from every state the table allows."""
    return _build(tasks.c.state, target, from_, check_task_move, task_sources(target))


def job_move(target: JobState, *from_: JobState) -> Move[JobState]:
    """A job's move to ``target`` from the named states, or from every allowed one."""
    return _build(jobs.c.state, target, from_, check_job_move, job_sources(target))


def _build(column: sa.Column[Any], target: State, from_: tuple[State, ...],
           check: Callable[[Any, Any], None], allowed: frozenset[State]) -> Move[State]:
    for source in from_:
        check(source, target)  # raises InvalidTransition
    move = Move(column, target, from_ or tuple(sorted(allowed)))
    MOVES.append(move)
    return move
