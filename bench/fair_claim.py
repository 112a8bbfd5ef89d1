"""Claim cost under fair share: one claim statement set, timed alone, as the queue and the
number of users grow.

Builds a coordinator's services over a real database (no HTTP), submits no-op ``sleep``
jobs through the service layer, then times ``claim_candidates`` for one worker (limit 9:
one free slot plus the claim's spare) ``SAMPLES`` times, each in a transaction rolled
back so the queue stays as it is, and counts the statements it sent. Scenarios:
  * one user, 1,000 queued; one user, 100,000 queued;
  * two users: a with 100,000 queued in 100 jobs, b with 10 in one job.
Runs on the code it is imported with, so the same script times the claim before and after
a change (``PYTHONPATH`` at the other tree).

    python bench/fair_claim.py [--database sqlite|postgresql] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _servers import postgres_server

from parallel_pilot.coordinator.app import build_services
from parallel_pilot.coordinator.bootstrap import ensure_admin
from parallel_pilot.coordinator.services import jobs
from parallel_pilot.core.protocol import JobSubmit
from parallel_pilot.core.settings import CoordinatorSettings
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import sync as qs

SAMPLES = 200  # claims timed per scenario
LIMIT = 9  # tasks one claim reads (one free slot + the claim's spare of 8)


def _submit(svc: Any, caller: jobs.Caller, tasks: int) -> None:
    jobs.submit(svc, caller, JobSubmit(kind="sleep", params={"tasks": tasks,
                                                             "milliseconds": 0}))


def _time_claims(svc: Any) -> dict[str, float]:
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    samples = []
    sa.event.listen(svc.engine, "before_cursor_execute", count)
    try:
        for _ in range(SAMPLES):
            with svc.engine.connect() as conn, conn.begin() as tx:
                started = time.perf_counter()
                rows = qs.claim_candidates(conn, worker_id=1, kinds=["sleep"], sets=[0],
                                           block_threshold=3, limit=LIMIT,
                                           lock=svc.lock_claims)
                samples.append(time.perf_counter() - started)
                assert rows, "the claim found nothing"
                tx.rollback()
    finally:
        sa.event.remove(svc.engine, "before_cursor_execute", count)
    ordered = sorted(samples)
    return {"median_ms": statistics.median(samples) * 1000,
            "p95_ms": ordered[int(0.95 * len(ordered)) - 1] * 1000,
            "statements": statements / SAMPLES}


def _services(url: str, data: Path) -> Any:
    svc = build_services(CoordinatorSettings(data_dir=data, database_url=url))
    ensure_admin(svc)
    return svc


def run(database: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        scenarios = [("one user, 1,000 queued", [(1_000, 1)]),
                     ("one user, 100,000 queued", [(1_000, 100)]),
                     ("a 100,000 in 100 jobs + b 10", [(1_000, 100), (10, 1)])]
        for label, per_user in scenarios:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = (stack.enter_context(postgres_server()) if database == "postgresql"
                   else f"sqlite:///{tmp / 'pilot.db'}")
            svc = _services(url, tmp / "data")
            for i, (tasks, count) in enumerate(per_user):
                with svc.transaction() as conn:
                    user = q.insert_user(conn, f"u{i}", False, time.time())
                caller = jobs.Caller(user, f"u{i}", False)
                for _ in range(count):
                    _submit(svc, caller, tasks)
            with svc.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
            out[label] = _time_claims(svc)
            svc.engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.database)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"claim_candidates on {args.database}, limit {LIMIT}, {SAMPLES} claims each")
    print(f"{'scenario':34} {'median ms':>10} {'p95 ms':>8} {'statements':>11}")
    for label, f in figures.items():
        print(f"{label:34} {f['median_ms']:10.2f} {f['p95_ms']:8.2f} {f['statements']:11.2f}")


if __name__ == "__main__":
    main()
