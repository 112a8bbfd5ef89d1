"""The pure parts of ``coordinator.services.trust`` and ``services.rates``: the slots a
worker is given, whose word a report is, whose count its failures add to, the windows."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from parallel_pilot.coordinator.services import rates, trust
from parallel_pilot.core.settings import CoordinatorSettings


def svc(**settings: Any) -> Any:
    return SimpleNamespace(settings=CoordinatorSettings(**settings))


def worker(**fields: Any) -> Any:
    row = {"id": 7, "join_token_id": 3, "trusted": False, "slots": None, **fields}
    return SimpleNamespace(**row)


def test_allowed_slots_cap_the_claim_by_the_farm_and_the_join_token() -> None:
    assert trust.allowed_slots(svc(), 8, None) == 8
    assert trust.allowed_slots(svc(max_worker_slots=4), 8, None) == 4
    assert trust.allowed_slots(svc(max_worker_slots=4), 8, 2) == 2
    assert trust.allowed_slots(svc(), 1, 16) == 1  # never more than it asked


def test_slots_now_follow_a_lowered_farm_cap_and_the_worker_claim() -> None:
    assert trust.slots_now(svc(), worker(slots=8), 8) == 8
    assert trust.slots_now(svc(max_worker_slots=2), worker(slots=8), 8) == 2
    assert trust.slots_now(svc(), worker(slots=None), 3) == 3  # a row from before the cap
    assert trust.slots_now(svc(), worker(slots=8), 2) == 2  # it asks for fewer now


def test_a_report_speaks_for_the_join_token_and_a_trusted_worker_for_itself() -> None:
    assert trust.identity(worker()) == "join-token:3"
    assert trust.identity(worker(join_token_id=None)) == "worker:7"
    assert trust.token_of(worker()) == 3
    assert trust.token_of(worker(trusted=True)) is None


def test_doubt_is_noted_only_for_a_non_retryable_report_that_was_retried() -> None:
    assert trust.doubt_note(retryable=True, retried=True) == ""
    assert trust.doubt_note(retryable=False, retried=False) == ""
    assert "another join token" in trust.doubt_note(retryable=False, retried=True)


def test_windows_are_whole_minutes() -> None:
    assert rates.window_start(119.9) == 60.0 and rates.window_start(120.0) == 120.0
