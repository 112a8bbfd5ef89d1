"""Every task and job state write of the query modules goes through the transition table
(``core/states.py``): each UPDATE that sets a state names, in its WHERE clause, only
source states the table allows for its target, and a move the table forbids does not load."""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.sql import visitors

from parallel_pilot.core import states
from parallel_pilot.core.states import JobState, TaskState, job_sources, task_sources
from parallel_pilot.errors import InvalidTransition
from parallel_pilot.store import queries as q
from parallel_pilot.store.database import open_database
from parallel_pilot.store.queries import jobs as job_queries
from parallel_pilot.store.queries import moves
from parallel_pilot.store.queries import quorum as quorum_queries
from parallel_pilot.store.queries import tasks as task_queries
from parallel_pilot.store.tables import jobs, tasks

MODULES = (task_queries, job_queries, quorum_queries)
# a function writes a state when it sets ``state=`` / ``"state":`` or uses a move's values
WRITES_STATE = re.compile(r"\bstate\s*=(?!=)|[\"']state[\"']\s*:|\b([A-Z][A-Z_]*|move)"
                          r"(\[[^\]]*\])?\.values\(")
INITIAL = {"tasks": {TaskState.BLOCKED, TaskState.READY}, "jobs": {JobState.QUEUED}}
NOW = 1_800_000_000.0


def state_writers() -> set[str]:
    found = set()
    for module in MODULES:
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and WRITES_STATE.search(inspect.getsource(fn)):
                found.add(name)
    return found


class Recorder:
    """Each state write executed: (function running, table, target, sources in WHERE)."""

    def __init__(self) -> None:
        self.function = ""
        self.writes: list[tuple[str, str, str, set[str] | None]] = []

    def __call__(self, conn: sa.Connection, statement: Any, multiparams: Any, params: Any,
                 options: Any) -> None:
        if isinstance(statement, sa.Insert) and statement.table.name in INITIAL:
            rows = [r for batch in multiparams for r in
                    (batch if isinstance(batch, list) else [batch])] or [params]
            values = statement.compile().params
            for row in rows:
                state = (row or {}).get("state", values.get("state"))
                self.writes.append((self.function, statement.table.name, str(state), None))
        if not isinstance(statement, sa.Update) or statement.table.name not in INITIAL:
            return
        target = statement.compile().params.get("state")
        if target is None:
            return
        column = statement.table.c.state
        sources: set[str] = set()
        for element in visitors.iterate(statement.whereclause):
            if isinstance(element, sa.BinaryExpression) and element.left is column:
                value = element.right.value  # type: ignore[attr-defined]
                sources |= {str(v) for v in (value if isinstance(value, list) else [value])}
        self.writes.append((self.function, statement.table.name, str(target), sources))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = open_database(f"sqlite:///{tmp_path / 'pilot.db'}")
    yield engine
    engine.dispose()


def test_every_state_write_names_only_sources_the_table_allows(engine: sa.Engine) -> None:
    recorder = Recorder()
    sa.event.listen(engine, "before_execute", recorder)
    with engine.begin() as conn:
        def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            recorder.function = fn.__name__
            return fn(*args, **kwargs)

        user = q.insert_user(conn, "ada", True, NOW)
        job = call(job_queries.insert_job, conn, owner_id=user, name="j", kind="sleep",
                   params={}, priority=0, max_attempts=3, tasks_total=6, now=NOW)
        rows = [{"idx": i, "name": f"t{i}", "kind": "sleep", "priority": 0, "payload": {},
                 "inputs": [], "max_attempts": 3, "requirements": None, "quorum": None,
                 "deadline_seconds": None, "affinity": None,
                 "state": TaskState.BLOCKED if i in (1, 5) else TaskState.READY,
                 "deps_left": 1 if i in (1, 5) else 0} for i in range(6)]
        ids = call(task_queries.insert_tasks, conn, job, rows)
        q.insert_task_deps(conn, [(ids[1], ids[0]), (ids[5], ids[0])])
        leased = call(task_queries.lease_tasks, conn, [ids[0], ids[2], ids[3], ids[4]],
                      worker_id=1, now=NOW, expires_at=NOW + 60)
        assert len(leased) == 4
        call(job_queries.mark_job_running, conn, [job], NOW)
        assert call(task_queries.complete_task, conn, ids[0], 1, 1, {}, NOW)
        assert call(task_queries.unblock_dependents, conn, ids[0])
        assert call(task_queries.requeue_task, conn, ids[2], 1, count_failure=True, error="x")
        assert call(task_queries.fail_task, conn, ids[3], 1, "e", NOW)
        assert call(task_queries.cancel_job_tasks, conn, job, [ids[4]], NOW, "r") == [ids[4]]
        assert call(quorum_queries.release_quorum_task, conn, ids[5]) is False  # deps done
        assert call(quorum_queries.skip_tasks, conn, [ids[1]], NOW, "r") == 1
        call(task_queries.reopen_tasks, conn, [ids[3]], 0)
        call(task_queries.reopen_tasks, conn, [ids[4]], 1)
        assert call(task_queries.cancel_open_tasks, conn, job, NOW, "r") >= 3
        for target in (JobState.FAILED, JobState.QUEUED, JobState.CANCELLED, JobState.QUEUED,
                       JobState.COMPLETED):
            assert call(job_queries.set_job_state, conn, job, target, NOW)

    written_by = {w[0] for w in recorder.writes}
    assert state_writers() <= written_by, "a state writer is not exercised here"
    for function, table, target, sources in recorder.writes:
        if sources is None:
            assert target in INITIAL[table], (function, target)
            continue
        allowed = task_sources(TaskState(target)) if table == "tasks" \
            else job_sources(JobState(target))
        assert sources, f"{function} writes {table}.state={target} from any state"
        assert sources <= {str(s) for s in allowed}, (function, target, sources)


def test_the_writers_found_are_the_known_ones() -> None:
    assert state_writers() == {
        "lease_tasks", "complete_task", "requeue_task", "fail_task", "unblock_dependents",
        "cancel_open_tasks", "reopen_tasks", "cancel_job_tasks", "skip_tasks",
        "release_quorum_task", "insert_job", "set_job_state", "mark_job_running"}


def test_every_move_built_is_allowed_by_the_table() -> None:
    assert len(moves.MOVES) >= 13
    for move in moves.MOVES:
        allowed = task_sources(move.target) if move.column.table is tasks \
            else job_sources(move.target)
        assert move.column.table in (tasks, jobs)
        assert move.sources and set(move.sources) <= allowed, move


def test_a_move_the_table_forbids_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(states.TASK_TRANSITIONS, TaskState.LEASED,
                        frozenset({TaskState.READY, TaskState.FAILED, TaskState.CANCELLED}))
    with pytest.raises(InvalidTransition, match="leased to done"):
        moves.task_move(TaskState.DONE, TaskState.LEASED)
    # the module whose report completes a leased task does not load under that table
    spec = importlib.util.spec_from_file_location("_tasks_copy", task_queries.__file__)
    assert spec is not None and spec.loader is not None
    with pytest.raises(InvalidTransition, match="leased to done"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    monkeypatch.setitem(states.JOB_TRANSITIONS, JobState.QUEUED, frozenset())
    with pytest.raises(InvalidTransition, match="queued to running"):
        moves.job_move(JobState.RUNNING, JobState.QUEUED)


def test_a_move_sets_its_own_state() -> None:
    with pytest.raises(ValueError):
        task_queries.COMPLETE.values(state=TaskState.READY)
    assert task_queries.COMPLETE.values(error=None) == {"state": TaskState.DONE, "error": None}


def test_a_task_is_inserted_blocked_or_ready(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        user = q.insert_user(conn, "ada", True, NOW)
        job = job_queries.insert_job(conn, owner_id=user, name="j", kind="sleep", params={},
                                     priority=0, max_attempts=3, tasks_total=1, now=NOW)
        row = {"idx": 0, "name": "t", "kind": "sleep", "priority": 0, "payload": {},
               "inputs": [], "max_attempts": 3, "requirements": None, "deps_left": 0,
               "state": TaskState.LEASED}
        with pytest.raises(InvalidTransition, match="not leased"):
            task_queries.insert_tasks(conn, job, [row])
