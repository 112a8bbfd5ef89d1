"""``/healthz``, ``/readyz`` and ``/metrics`` on the real app over SQLite, PostgreSQL and
MariaDB: readiness says when the database does not answer; the metrics (Prometheus text,
admins only) count tasks, jobs and workers per state as the API lists them, time each
request by its route's template, and time reported attempts."""

from __future__ import annotations

import re

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from parallel_pilot.store.database import make_engine
from tests.integration.conftest import Coordinator
from tests.integration.test_sync import API, done, register, submit, sync_


def scrape(coord: Coordinator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = coord.client.get("/metrics", headers=coord.user())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_health_and_readiness(coordinator: Coordinator) -> None:
    assert coordinator.client.get("/healthz").json() == {"ok": True}
    assert coordinator.client.get("/readyz").json() == {"ok": True}


def test_readiness_says_when_the_database_does_not_answer(
        coordinator: Coordinator, tmp_path) -> None:
    svc = coordinator.services
    working = svc.engine
    svc.engine = make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'pilot.db'}")
    try:
        r = coordinator.client.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {"ok": False, "reason": "the database does not answer "
                                                   "(OperationalError)"}
        assert coordinator.client.get("/healthz").status_code == 200  # alive all the same
    finally:
        svc.engine.dispose()
        svc.engine = working
    assert coordinator.client.get("/readyz").status_code == 200


def test_metrics_are_for_admins_only(coordinator: Coordinator) -> None:
    assert coordinator.client.get("/metrics").status_code == 401
    created = coordinator.client.post(f"{API}/users", headers=coordinator.user(),
                                      json={"name": "mallory"})
    assert created.status_code == 200, created.text
    r = coordinator.client.get("/metrics", headers=coordinator.user(created.json()["token"]))
    assert r.status_code == 403 and "admin" in r.json()["message"]


def test_metrics_count_the_farm_and_time_requests_and_attempts(
        coordinator: Coordinator) -> None:
    coord = coordinator
    job_id = submit(coord, tasks=3)
    worker = register(coord, "w", slots=2)
    leases = sync_(coord, worker, free_slots=2)["tasks"]
    coord.clock.advance(4.0)  # the attempts take 4 s on the coordinator's clock
    sync_(coord, worker, reports=done(leases[:1]), held=[
        {"task_id": t["task_id"], "attempt": t["attempt"]} for t in leases[1:]])
    coord.client.get(f"{API}/jobs/{job_id}", headers=coord.user())
    coord.client.get(f"{API}/jobs/999999", headers=coord.user())  # a 404 on the same route

    m = scrape(coord)
    assert m[("pilot_tasks", (("state", "ready"),))] == 1
    assert m[("pilot_tasks", (("state", "leased"),))] == 1
    assert m[("pilot_tasks", (("state", "done"),))] == 1
    assert m[("pilot_jobs", (("state", "running"),))] == 1
    assert m[("pilot_jobs", (("state", "completed"),))] == 0
    assert m[("pilot_workers", (("state", "busy"),))] == 1
    assert m[("pilot_workers", (("state", "offline"),))] == 0
    attempts = (("kind", "sleep"), ("outcome", "completed"))
    assert m[("pilot_task_duration_seconds_count", attempts)] == 1
    assert m[("pilot_task_duration_seconds_sum", attempts)] == 4.0
    route = (("method", "GET"), ("route", f"{API}/jobs/{{job_id}}"))
    assert m[("pilot_http_request_duration_seconds_count", (*route, ("status", "200")))] == 1
    assert m[("pilot_http_request_duration_seconds_count", (*route, ("status", "404")))] == 1
    assert m[("pilot_http_request_duration_seconds_count",
              (("method", "POST"), ("route", f"{API}/jobs"), ("status", "201")))] == 1
    # no label carries a path as typed (ids, tokens): routes are templates
    routes = {dict(labels).get("route", "") for _, labels in m}
    assert routes and not any(re.search(r"/\d", route) for route in routes), routes


def test_task_counts_agree_with_the_tasks_table(coordinator: Coordinator) -> None:
    coord = coordinator
    submit(coord, tasks=4)
    submit(coord, tasks=2)
    worker = register(coord, "w", slots=3)
    sync_(coord, worker, reports=done(sync_(coord, worker, free_slots=3)["tasks"]))
    counted = {state: int(n) for (name, labels), n in scrape(coord).items()
               if name == "pilot_tasks" for _, state in labels}
    with coord.services.engine.connect() as conn:
        rows = {str(state): int(n) for state, n in conn.execute(
            sa.text("SELECT state, COUNT(*) FROM tasks GROUP BY state"))}
    assert {s: n for s, n in counted.items() if n} == rows
