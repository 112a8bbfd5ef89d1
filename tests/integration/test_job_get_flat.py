"""A client's read of a job costs the same whatever its number of tasks: its task counts are
kept on the job row (triggers of migration 0006), so ``GET /jobs/{id}`` reads no task row
while none is leased; and those counters stay equal to an aggregate over the tasks through
leases, reports, failures, cancels and retries, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.states import TaskState
from parallel_pilot.store import queries as q
from parallel_pilot.store.tables import jobs
from tests.integration.conftest import Coordinator
from tests.integration.test_lease_protocol import API, job, lease, report, submit_sleep

READS_TASKS = re.compile(r"\b(FROM|JOIN)\s+[`\"]?tasks\b", re.IGNORECASE)


@contextmanager
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def get_statements(coord: Coordinator, job_id: int) -> list[str]:
    with statements(coord.services.engine) as seen:
        info = job(coord, job_id)
    assert info["id"] == job_id
    return seen


def test_a_job_get_reads_no_task_rows_small_or_large(coordinator: Coordinator) -> None:
    small, large = submit_sleep(coordinator, tasks=3), submit_sleep(coordinator, tasks=2_000)
    for_small, for_large = get_statements(coordinator, small), get_statements(coordinator, large)
    assert len(for_small) == len(for_large)
    # a job with ready tasks and none leased says why it waits (issue 15): that reads one
    # ready task (LIMIT 1, through the job's index), whatever the job's size; nothing else
    reads = [s for s in for_large if READS_TASKS.search(s)]
    assert len(reads) == 1 and "LIMIT" in reads[0].upper() \
        and "requirement_set_id" in reads[0], for_large
    assert job(coordinator, large)["task_counts"] == {"ready": 2_000}
    # a leased task adds one aggregate over the job's *leased* tasks, not over all of them
    worker = coordinator.register_worker()
    assert len(lease(coordinator, worker, slots=2)) == 2
    leased_job = next(j for j in (small, large)
                      if job(coordinator, j)["task_counts"].get("leased"))
    reading = [s for s in get_statements(coordinator, leased_job) if READS_TASKS.search(s)]
    assert len(reading) == 1, reading


def aggregate(coord: Coordinator, job_id: int) -> dict[str, int]:
    with coord.services.engine.connect() as conn:
        return q.task_counts(conn, [job_id])[job_id]


def on_row(coord: Coordinator, job_id: int) -> dict[str, int]:
    with coord.services.engine.connect() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()
    return q.job_task_counts(row)


def check(coord: Coordinator, *job_ids: int) -> None:
    for job_id in job_ids:
        counts = aggregate(coord, job_id)
        assert on_row(coord, job_id) == counts
        assert job(coord, job_id)["task_counts"] == counts


def test_counts_on_the_job_row_stay_exact(coordinator: Coordinator) -> None:
    first, second = submit_sleep(coordinator, tasks=4), submit_sleep(coordinator, tasks=3)
    check(coordinator, first, second)
    worker = coordinator.register_worker()
    held = lease(coordinator, worker, slots=6)  # one statement leases tasks of both jobs
    assert {t["task_id"] for t in held}
    check(coordinator, first, second)
    assert report(coordinator, worker, held[0], "complete", result={}).status_code == 200
    assert report(coordinator, worker, held[1], "fail", reason="flaky").status_code == 200
    assert report(coordinator, worker, held[2], "fail", reason="bad",
                  retryable=False).status_code == 200
    check(coordinator, first, second)
    assert report(coordinator, worker, held[3], "release").status_code == 200
    check(coordinator, first, second)
    second_ids = [t["task_id"] for t in held if t["job_id"] == second]
    r = coordinator.client.post(f"{API}/jobs/{second}/tasks/cancel", headers=coordinator.user(),
                                json={"task_ids": second_ids[:1]})
    assert r.status_code == 200, r.text
    check(coordinator, first, second)
    for job_id in (first, second):
        r = coordinator.client.post(f"{API}/jobs/{job_id}/cancel", headers=coordinator.user())
        assert r.status_code == 200, r.text
    check(coordinator, first, second)
    r = coordinator.client.post(f"{API}/jobs/{first}/retry", headers=coordinator.user())
    assert r.status_code == 200, r.text
    check(coordinator, first, second)
    assert aggregate(coordinator, first).get(TaskState.READY, 0) >= 1


def test_counts_stay_exact_under_concurrent_workers(coordinator: Coordinator) -> None:
    jobs_made = [submit_sleep(coordinator, tasks=30), submit_sleep(coordinator, tasks=30)]
    workers = [coordinator.register_worker() for _ in range(4)]

    def drain(worker: dict[str, str]) -> int:
        finished = 0
        while held := lease(coordinator, worker, slots=3):
            for task in held:
                r = report(coordinator, worker, task, "complete", result={})
                assert r.status_code == 200, r.text
                finished += 1
        return finished

    with ThreadPoolExecutor(len(workers)) as pool:
        assert sum(pool.map(drain, workers)) == 60
    check(coordinator, *jobs_made)
    assert all(on_row(coordinator, j) == {"done": 30} for j in jobs_made)
