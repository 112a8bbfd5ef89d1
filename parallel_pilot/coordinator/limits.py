"""Bounds on what a request may name: ids and counters in paths and queries fit a signed
64-bit database integer, so an absurd number is a 422, never a database error."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_DB_INT = 2**63 - 1  # the largest BIGINT on SQLite, PostgreSQL and MariaDB

JobId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="a job's id")]
TaskId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="a task's id")]
AttemptNumber = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="the attempt held")]
TaskFilter = Annotated[int | None, Query(ge=1, le=MAX_DB_INT, description="only this task")]
AfterId = Annotated[int, Query(ge=0, le=MAX_DB_INT, description="lines after this id")]
