"""Two coordinators of one farm on one PostgreSQL database: a worker's long poll held by
coordinator A is answered with work submitted through coordinator B at once (LISTEN/NOTIFY,
``services/farm_bus.py``), not at A's next re-check, which this test puts out of reach."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parallel_pilot.coordinator.routes import workers as worker_routes
from parallel_pilot.coordinator.services.farm_bus import FarmBus
from tests.integration.conftest import make_coordinator
from tests.integration.test_sync import register, submit, sync_

POLL_SECONDS = 20.0  # the long poll's window; the re-check is made longer than it
ANSWER_SECONDS = 10.0  # a woken poll answers well within this


@pytest.mark.postgres
def test_a_long_poll_on_one_coordinator_is_woken_by_a_submit_through_another(
        fresh_database: Callable[..., str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_routes, "RECHECK_SECONDS", 3 * POLL_SECONDS)
    url = fresh_database("postgres", migrated=True)
    a, b = make_coordinator(url, tmp_path), make_coordinator(url, tmp_path)  # one data dir
    a.services.settings.long_poll_seconds = POLL_SECONDS
    answer: dict[str, Any] = {}
    try:
        with a.client, b.client:
            worker = register(a, "w")
            assert sync_(a, worker, free_slots=1)["tasks"] == []  # nothing queued yet

            def poll() -> None:
                started = time.monotonic()
                answer["tasks"] = sync_(a, worker, free_slots=1,
                                        wait_seconds=POLL_SECONDS)["tasks"]
                answer["seconds"] = time.monotonic() - started

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            deadline = time.monotonic() + ANSWER_SECONDS
            while a.services.notifier.waiting() == 0:  # the poll waits on A
                assert time.monotonic() < deadline, "the long poll never waited"
                time.sleep(0.01)
            job_id = submit(b)  # through the other coordinator
            poller.join(ANSWER_SECONDS)
            woken_by_b = not poller.is_alive()
            if not woken_by_b:  # end the poll, so that the test fails rather than hangs
                a.services.notifier.notify(relay=False)
                poller.join(ANSWER_SECONDS)
            assert woken_by_b, "the poll on A was not woken by B's submit"
            assert [t["job_id"] for t in answer["tasks"]] == [job_id]
            assert answer["seconds"] < ANSWER_SECONDS
    finally:
        a.services.engine.dispose()
        b.services.engine.dispose()


def test_only_postgresql_has_the_channel(tmp_path: Path) -> None:
    coord = make_coordinator(f"sqlite:///{tmp_path / 'pilot.db'}", tmp_path)
    with coord.client:
        assert not FarmBus.applies(coord.services.engine)
        assert coord.services.notifier.relay is None
