"""Helpers shared by the query modules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.states import JobState, TaskState

Row = sa.Row[Any]  # rows are read by column name


CHUNK = 500  # ids per IN (...) list / rows per multi-row insert


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _states(states: Iterable[TaskState | JobState]) -> list[str]:
    return [str(s) for s in states]
