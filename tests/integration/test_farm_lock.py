"""One coordinator of a farm reaps at a time: while another holds the reaper's lock (here
a second connection, as another coordinator process would), a reaper pass does nothing
and leaves the expired lease alone; once it is free, the next pass requeues it. On
SQLite, whose writer lock lets one transaction write at a time, the lock is always had."""

from __future__ import annotations

from parallel_pilot.coordinator.services import leasing
from parallel_pilot.store.queries.locks import farm_lock
from tests.integration.conftest import Coordinator
from tests.integration.test_sync import register, submit, sync_


def test_a_reaper_pass_gives_way_to_another_coordinators(coordinator: Coordinator) -> None:
    coord = coordinator
    submit(coord)
    [leased] = sync_(coord, register(coord, "w"), free_slots=1)["tasks"]
    coord.clock.advance(coord.services.settings.lease_seconds + 1)  # the worker vanished
    server = coord.services.engine.dialect.name != "sqlite"
    other = coord.services.engine.connect()  # another coordinator's connection
    try:
        if server:
            with other.begin(), farm_lock(other, leasing.REAPER_LOCK) as held:
                assert held
                assert leasing.reap(coord.services) == 0  # it gave way
                with coord.services.engine.connect() as conn, \
                        farm_lock(conn, leasing.REAPER_LOCK) as again:
                    assert not again  # and nobody else gets it either meanwhile
        assert leasing.reap(coord.services) == 1  # free again: the lease is requeued
    finally:
        other.close()
    assert [t["state"] for t in coord.client.get(
        f"/api/v1/jobs/{leased['job_id']}/tasks", headers=coord.user()).json()["tasks"]] \
        == ["ready"]
