"""SQL statements and transactions per task of a no-op job, for each worker protocol path.

Runs the coordinator app in-process (the real FastAPI app over a real database, driven
through Starlette's ``TestClient`` as the integration tests do), registers one worker and
drives it by hand, counting with SQLAlchemy events on the coordinator's engine:
``before_cursor_execute`` (one per statement sent; an ``executemany`` counts once) and
``begin`` (one per transaction). Paths, each over a job of ``--tasks`` no-op tasks:
  * ``lease + complete``: ``POST /workers/lease`` (1 slot) then
    ``POST /attempts/{task}/{attempt}/complete``, two requests per task (the old path);
  * ``sync``: ``POST /workers/sync`` with one free slot, each carrying the previous task's
    result (one request per task), where the coordinator has it;
  * ``sync, prefetch 16``: the same with ``prefetch`` 16, reporting every task of the
    previous answer at once (a worker that runs millisecond tasks).
Submitting the job is counted apart. SQLite's
transactions start with an explicit ``BEGIN`` statement (counted, and also shown without);
PostgreSQL's driver begins implicitly. Figures are per task, and include everything the
app ran while answering (authentication, the lease, the report, the job's bookkeeping).

    python bench/queries_per_task.py [--tasks 200] [--database sqlite|postgresql] [--json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _servers import postgres_server, postgres_unavailable
from fastapi.testclient import TestClient
from sqlalchemy import event

from parallel_pilot.coordinator.app import build_services, create_app
from parallel_pilot.coordinator.bootstrap import ensure_admin
from parallel_pilot.core.settings import CoordinatorSettings

TASKS = 200  # no-op tasks per path
API = "/api/v1"
PREFETCH = 16  # tasks asked beyond the free slot in the prefetch path


@dataclass
class Counter:
    statements: int = 0
    transactions: int = 0
    by_verb: collections.Counter[str] = field(default_factory=collections.Counter)
    on: bool = False

    def statement(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                  context: Any, executemany: bool) -> None:
        if self.on:
            self.statements += 1
            self.by_verb[statement.lstrip().split(None, 1)[0].upper()] += 1

    def begin(self, conn: Any) -> None:
        if self.on:
            self.transactions += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter]:
        self.statements, self.transactions, self.by_verb = 0, 0, collections.Counter()
        self.on = True
        try:
            yield self
        finally:
            self.on = False

    def per(self, tasks: int, seconds: float) -> dict[str, Any]:
        return {"tasks": tasks, "statements_per_task": self.statements / tasks,
                "statements_without_begin_per_task":
                    (self.statements - self.by_verb["BEGIN"]) / tasks,
                "transactions_per_task": self.transactions / tasks,
                "by_verb_per_task": {k: v / tasks for k, v in sorted(self.by_verb.items())},
                "in_process_ms_per_task": seconds / tasks * 1000}


def _ok(response: Any) -> Any:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: "
                           f"{response.status_code} {response.text[:300]}")
    return response.json()


def _lease_path(client: TestClient, worker: dict[str, str], tasks: int) -> None:
    for _ in range(tasks):
        leased = _ok(client.post(f"{API}/workers/lease", headers=worker,
                                 json={"slots": 1, "wait_seconds": 0}))["tasks"]
        if not leased:
            raise RuntimeError("a lease with tasks queued came back empty")
        for t in leased:
            _ok(client.post(f"{API}/attempts/{t['task_id']}/{t['attempt']}/complete",
                            headers=worker, json={"result": {}}))


def _sync_path(client: TestClient, worker: dict[str, str], tasks: int, prefetch: int) -> None:
    done, reports = 0, []
    while done < tasks:
        answer = _ok(client.post(f"{API}/workers/sync", headers=worker, json={
            "reports": reports, "held": [], "free_slots": 1, "prefetch": prefetch,
            "wait_seconds": 0}))
        done += len(reports)
        if not answer["tasks"] and done < tasks:
            raise RuntimeError("a sync with tasks queued leased nothing")
        reports = [{"task_id": t["task_id"], "attempt": t["attempt"], "outcome": "completed",
                    "result": {}} for t in answer["tasks"]]


def measure(database: str, tasks: int) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        url = None
        if database == "postgresql":
            reason = postgres_unavailable()
            if reason:
                return {"database": database, "missing": reason}
            url = stack.enter_context(postgres_server())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-queries-")))
        settings = CoordinatorSettings(data_dir=tmp / "data", database_url=url,
                                       long_poll_seconds=0.5)
        services = build_services(settings)
        stack.callback(services.engine.dispose)
        ensure_admin(services)
        admin = {"Authorization": "Bearer "
                 + (settings.data_dir / "admin-token").read_text().strip()}
        join = (settings.data_dir / "join-token").read_text().strip()
        counter = Counter()
        event.listen(services.engine, "before_cursor_execute", counter.statement)
        event.listen(services.engine, "begin", counter.begin)
        client = stack.enter_context(TestClient(create_app(services, run_reaper=False)))
        registered = _ok(client.post(f"{API}/workers/register", json={
            "join_token": join, "name": "bench-driver",
            "capabilities": {"cpu_cores": 2, "ram_bytes": 2**30, "kinds": ["sleep"]}}))
        worker = {"Authorization": f"Bearer {registered['worker_token']}"}
        probe = client.post(f"{API}/workers/sync", headers=worker,
                            json={"free_slots": 0, "wait_seconds": 0})
        paths: list[tuple[str, Any]] = [("lease + complete", _lease_path)]
        if probe.status_code not in (404, 405):
            paths.append(("sync", lambda c, w, n: _sync_path(c, w, n, 0)))
            paths.append((f"sync, prefetch {PREFETCH}",
                          lambda c, w, n: _sync_path(c, w, n, PREFETCH)))
        result: dict[str, Any] = {"database": database, "paths": {}}
        for name, drive in paths:
            with counter.counting():
                started = time.perf_counter()
                job = _ok(client.post(f"{API}/jobs", headers=admin, json={
                    "kind": "sleep", "params": {"tasks": tasks, "milliseconds": 0}}))
                submit = counter.per(tasks, time.perf_counter() - started)
            with counter.counting():
                started = time.perf_counter()
                try:
                    drive(client, worker, tasks)
                except RuntimeError as exc:
                    result["paths"][name] = {"error": str(exc)}
                    continue
                figures = counter.per(tasks, time.perf_counter() - started)
            state = _ok(client.get(f"{API}/jobs/{job['id']}", headers=admin))["state"]
            result["paths"][name] = {**figures, "submit": submit, "job_state": state}
        return result


def print_table(r: dict[str, Any]) -> None:
    if "missing" in r:
        print(f"queries per task, {r['database']}: {r['missing']}")
        return
    print(f"Per task of a no-op job on {r['database']} (in-process app, one worker driven "
          f"by hand)")
    print(f"{'path':<22}{'statements':>12}{'w/o BEGIN':>11}{'transactions':>14}"
          f"{'ms (in-process)':>17}  statements by verb")
    for name, f in r["paths"].items():
        if "error" in f:
            print(f"{name:<22}{f['error']}")
            continue
        verbs = ", ".join(f"{k} {v:.2f}" for k, v in f["by_verb_per_task"].items())
        print(f"{name:<22}{f['statements_per_task']:>12.2f}"
              f"{f['statements_without_begin_per_task']:>11.2f}{f['transactions_per_task']:>14.2f}"
              f"{f['in_process_ms_per_task']:>17.2f}  {verbs}")
    for name, f in r["paths"].items():
        if "submit" in f:
            s = f["submit"]
            print(f"submitting the job ({name}): {s['statements_per_task']:.2f} statements, "
                  f"{s['transactions_per_task']:.3f} transactions per task; job "
                  f"{f['job_state']}")
            break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=TASKS, help="no-op tasks per path")
    parser.add_argument("--database", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--json", action="store_true", help="print only JSON")
    args = parser.parse_args(argv)
    result = measure(args.database, args.tasks)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
