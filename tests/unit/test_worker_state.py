"""The worker's state machine, event by event, with time passed in (no sockets, no threads):
prefetch, cancel of a prefetched task, lease expiry, reports resent after a dropped
connection, leaving with held tasks, slots never exceeded."""

from __future__ import annotations

from typing import Any

from parallel_pilot.core.protocol import (
    AttemptReport,
    AttemptStop,
    ReportVerdict,
    SyncResponse,
    TaskLease,
)
from parallel_pilot.worker.prefetch import PREFETCH_PER_SLOT_MAX
from parallel_pilot.worker.state import (
    IDLE_PAUSE_SECONDS,
    LONG_POLL_SECONDS,
    STOP_GRACE_SECONDS,
    Instruction,
    Leave,
    Send,
    Start,
    Stop,
    StopReason,
    WorkerState,
)

LEASE = 60.0


def lease(task_id: int, kind: str = "sleep", attempt: int = 1) -> TaskLease:
    return TaskLease(task_id=task_id, attempt=attempt, job_id=1, kind=kind,
                     name=f"t{task_id}", payload={}, inputs={}, lease_expires_at=0.0,
                     heartbeat_seconds=3.0)


def answer(tasks: list[TaskLease] = (), verdicts: list[tuple[int, int, bool]] = (),  # type: ignore[assignment]
           stop: list[tuple[int, int]] = (), granted: int = 0) -> SyncResponse:  # type: ignore[assignment]
    return SyncResponse(
        tasks=list(tasks), lease_expires_at=0.0, sync_seconds=3.0, lease_seconds=LEASE,
        verdicts=[ReportVerdict(task_id=t, attempt=a, accepted=ok) for t, a, ok in verdicts],
        stop=[AttemptStop(task_id=t, attempt=a, reason="job cancelled") for t, a in stop],
        prefetch_granted=granted)


def done(task_id: int, attempt: int = 1, **result: Any) -> AttemptReport:
    return AttemptReport(task_id=task_id, attempt=attempt, outcome="completed",
                         result=result or {"ok": True})


def sends(out: list[Instruction]) -> list[Send]:
    return [i for i in out if isinstance(i, Send)]


def starts(out: list[Instruction]) -> list[int]:
    return [i.lease.task_id for i in out if isinstance(i, Start)]


def one_send(out: list[Instruction]) -> Send:
    found = sends(out)
    assert len(found) == 1, out
    return found[0]


class Driver:
    """Runs ``decide`` and remembers the sync it last asked for, so a test can answer it."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self.sent: Send | None = None

    def decide(self, now: float) -> list[Instruction]:
        out = self.state.decide(now)
        for send in sends(out):
            self.sent = send
        return out

    def exchange(self, now: float, response: SyncResponse) -> list[Instruction]:
        """The sync in flight (or the one ``decide`` asks for now) answered; what follows."""
        if not self.state.in_flight:
            one_send(self.decide(now))
        assert self.sent is not None
        self.state.answered(self.sent.sync_id, response, now + 0.001)
        return self.decide(now + 0.001)


def exchange(state: WorkerState, now: float, response: SyncResponse) -> list[Instruction]:
    return driver(state).exchange(now, response)


_drivers: dict[int, Driver] = {}


def driver(state: WorkerState) -> Driver:
    return _drivers.setdefault(id(state), Driver(state))


def decide(state: WorkerState, now: float) -> list[Instruction]:
    return driver(state).decide(now)


def settle(state: WorkerState, now: float) -> None:
    """Answer syncs (every report accepted) until nothing is pending and no sync is in
    flight but an idle long poll, which is answered empty."""
    d = driver(state)
    for _ in range(20):
        if not state.in_flight:
            d.decide(now)
        if not state.in_flight:
            return
        assert d.sent is not None
        idle = d.sent.request.wait_seconds > 0 and not state.reports
        exchange(state, now, answer(verdicts=[(t, a, True) for t, a in state.reports],
                                    granted=64))
        if idle:
            return
    raise AssertionError("the state kept syncing")


def run_fast_tasks(state: WorkerState, kind: str, seconds: float, count: int,
                   now: float = 0.0) -> float:
    """Lease and finish ``count`` tasks of ``kind`` taking ``seconds`` each, one by one,
    and leave the state idle with every sync answered."""
    for n in range(count):
        settle(state, now)
        now += 2 * IDLE_PAUSE_SECONDS  # an empty poll that came back at once: a pause
        out = exchange(state, now, answer([lease(1000 + n, kind)], granted=64))
        for task_id in starts(out):
            state.finished(done(task_id), seconds)
        now += 1.0
        settle(state, now)
    return now + 1.0


def test_an_idle_worker_long_polls_and_starts_what_it_gets() -> None:
    state = WorkerState(slots=1)
    send = one_send(decide(state, 0.0))
    assert send.request.wait_seconds == LONG_POLL_SECONDS and send.request.free_slots == 1
    assert send.request.prefetch == 0  # nothing measured yet: no prefetch
    assert decide(state, 0.0) == []  # one sync at a time
    state.answered(send.sync_id, answer([lease(1)]), 1.0)
    assert starts(decide(state, 1.0)) == [1]


def test_prefetch_grows_for_fast_tasks_and_stays_zero_for_slow_ones() -> None:
    fast = WorkerState(slots=2)
    run_fast_tasks(fast, "sleep", 0.00001, 3)
    assert fast.prefetch_depth() == 2 * PREFETCH_PER_SLOT_MAX
    slow = WorkerState(slots=2)
    t = run_fast_tasks(slow, "render", 90.0, 3)
    assert slow.prefetch_depth() == 0
    assert one_send(decide(slow, t)).request.prefetch == 0
    # a slow kind among recent leases keeps the depth down for all
    run_fast_tasks(fast, "render", 90.0, 1, now=100.0)
    assert fast.prefetch_depth() == 0


def test_never_holds_more_than_slots_plus_granted_prefetch() -> None:
    state = WorkerState(slots=1)
    t = run_fast_tasks(state, "sleep", 0.00001, 2)
    send = one_send(decide(state, t))
    assert send.request.prefetch == PREFETCH_PER_SLOT_MAX
    # the coordinator grants 2 but sends 5: two go straight back
    state.answered(send.sync_id, answer([lease(i) for i in range(1, 6)], granted=2), t)
    out = decide(state, t)
    assert starts(out) == [1]
    assert len(state.held) == 3
    released = [r for r in one_send(out).request.reports if r.outcome == "released"]
    assert [r.task_id for r in released] == [4, 5]
    assert {(r.task_id) for r in one_send(out).request.held} == {1, 2, 3}


def test_slots_are_never_exceeded() -> None:
    state = WorkerState(slots=2)
    t = run_fast_tasks(state, "sleep", 0.00001, 2)
    out = exchange(state, t, answer([lease(i) for i in range(1, 9)], granted=16))
    assert starts(out) == [1, 2]
    assert len(state.running) == 2
    state.finished(done(1), 0.0001)
    out = decide(state, t + 0.1)
    assert starts(out) == [3] and len(state.running) == 2
    assert starts(decide(state, t + 0.2)) == []


def test_a_stopped_prefetched_task_is_dropped_without_running() -> None:
    state = WorkerState(slots=1)
    t = run_fast_tasks(state, "sleep", 0.00001, 2)
    exchange(state, t, answer([lease(1), lease(2)], granted=8))
    settle(state, t)
    assert state.running == [(1, 1)]
    state.progress((1, 1), 0.5, None, [])
    send = one_send(decide(state, t + 4))  # heartbeat
    assert {r.task_id for r in send.request.held} == {1, 2}
    state.answered(send.sync_id, answer(stop=[(2, 1)]), t + 4)
    out = decide(state, t + 4)
    assert not [i for i in out if isinstance(i, Stop)]  # nothing ran: nothing to stop
    assert (2, 1) not in state.held and state.outcomes["dropped"] == 1
    if state.in_flight:  # it asked for more at once: none come
        exchange(state, t + 4, answer(granted=8))
    state.finished(done(1), 0.0001)
    out = decide(state, t + 4.1)
    assert starts(out) == []  # task 2 never runs
    reports = one_send(out).request.reports
    assert [r.task_id for r in reports] == [1]  # and is not reported as a result


def test_a_stopped_running_task_is_stopped_and_its_result_dropped() -> None:
    state = WorkerState(slots=1)
    exchange(state, 0.0, answer([lease(1)]))
    send = one_send(decide(state, 3.0))
    state.answered(send.sync_id, answer(stop=[(1, 1)]), 3.0)
    out = decide(state, 3.0)
    assert [(i.task_id, i.reason) for i in out if isinstance(i, Stop)] == [
        (1, StopReason.COORDINATOR)]
    state.finished(done(1), 1.0)
    assert state.reports == {} and state.outcomes["dropped"] == 1


def test_lease_expiry_stops_running_attempts_and_drops_their_results() -> None:
    state = WorkerState(slots=1)
    run_fast_tasks(state, "sleep", 0.001, 2)
    exchange(state, 10.0, answer([lease(1), lease(2)], granted=4))
    settle(state, 10.0)
    failed = 0
    for step in range(1, int(LEASE) * 2):  # heartbeats and retries that never get through
        now = 10.0 + step / 2
        state.tick(now)
        out = decide(state, now)
        assert not [i for i in out if isinstance(i, Stop)]
        for send in sends(out):
            state.sync_failed(send.sync_id, now)
            failed += 1
    assert failed >= 10
    state.tick(10.01 + LEASE)  # the last answered sync went at 10.001
    out = decide(state, 10.01 + LEASE)
    assert [(i.task_id, i.reason) for i in out if isinstance(i, Stop)] == [
        (1, StopReason.LEASE_LOST)]
    assert (2, 1) not in state.held  # the prefetched one is dropped
    state.finished(done(1), 50.0)
    assert state.reports == {}  # its result is dropped
    assert any("lease is lost" in note for note in state.notes)


def test_a_report_stays_pending_until_its_verdict_after_a_dropped_connection() -> None:
    state = WorkerState(slots=1)
    exchange(state, 0.0, answer([lease(1)]))
    state.finished(done(1, value=42), 0.5)
    first = one_send(decide(state, 1.0))
    assert [(r.task_id, r.outcome) for r in first.request.reports] == [(1, "completed")]
    assert first.request.held == []  # reported finished, so not listed as held
    state.sync_failed(first.sync_id, 1.0)  # the connection dropped
    assert decide(state, 1.0) == []  # backing off
    again = one_send(decide(state, 2.0))
    assert again.request.reports == first.request.reports  # sent again, the same
    # an answer without its verdict keeps it too
    state.answered(again.sync_id, answer(), 2.0)
    third = one_send(decide(state, 2.0))
    assert third.request.reports == first.request.reports
    state.answered(third.sync_id, answer(verdicts=[(1, 1, True)]), 2.1)
    assert state.reports == {} and state.outcomes["completed"] == 1
    assert one_send(decide(state, 2.1)).request.reports == []


def test_log_lines_of_a_failed_sync_go_again_ahead_of_newer_ones() -> None:
    state = WorkerState(slots=1)
    exchange(state, 0.0, answer([lease(1)]))
    state.progress((1, 1), 0.25, "a quarter", ["one", "two"])
    send = one_send(decide(state, 3.0))
    (report,) = send.request.reports
    assert report.outcome == "running" and report.log_lines == ["one", "two"]
    state.sync_failed(send.sync_id, 3.0)
    state.progress((1, 1), 0.25, "a quarter", ["three"])
    state.finished(done(1), 4.0)
    (final,) = one_send(decide(state, 4.0)).request.reports
    assert final.outcome == "completed" and final.log_lines == ["one", "two", "three"]


def test_leaving_releases_held_tasks_at_once_then_leaves() -> None:
    state = WorkerState(slots=1)
    run_fast_tasks(state, "sleep", 0.00001, 2)
    exchange(state, 5.0, answer([lease(1), lease(2), lease(3)], granted=8))
    settle(state, 5.0)
    state.outcomes.clear()
    state.stop_requested(hard=False, now=6.0, drain_seconds=30.0)
    send = one_send(decide(state, 6.0))  # the prefetched ones go back at once
    assert not send.request.leaving and send.request.free_slots == 0
    assert send.request.prefetch == 0
    assert sorted((r.task_id, r.outcome) for r in send.request.reports) == [
        (2, "released"), (3, "released")]
    assert [r.task_id for r in send.request.held] == [1]
    state.answered(send.sync_id, answer(verdicts=[(2, 1, True), (3, 1, True)]), 6.0)
    state.finished(done(1), 1.0)  # the running one finishes within the drain
    leave = one_send(decide(state, 7.0))
    assert leave.request.leaving and leave.request.held == []
    assert [(r.task_id, r.outcome) for r in leave.request.reports] == [(1, "completed")]
    state.answered(leave.sync_id, answer(verdicts=[(1, 1, True)]), 7.0)
    assert decide(state, 7.0) == [Leave(told=True)]
    assert state.outcomes == {"completed": 1, "released": 2}


def test_a_hard_stop_hands_everything_back_in_one_leaving_sync() -> None:
    state = WorkerState(slots=2)
    run_fast_tasks(state, "sleep", 0.00001, 2)
    exchange(state, 5.0, answer([lease(i) for i in range(1, 5)], granted=8))
    settle(state, 5.0)
    state.stop_requested(hard=True, now=6.0, drain_seconds=30.0)
    out = decide(state, 6.0)
    assert sorted(i.task_id for i in out if isinstance(i, Stop)) == [1, 2]
    leave = one_send(out)
    assert leave.request.leaving and leave.request.held == []
    assert sorted((r.task_id, r.outcome) for r in leave.request.reports) == [
        (1, "released"), (2, "released"), (3, "released"), (4, "released")]
    state.finished(done(1), 1.0)  # a result after the hand-back is ignored
    assert all(r.outcome == "released" for r in state.reports.values())


def test_drain_then_grace_then_hand_back() -> None:
    state = WorkerState(slots=1)
    exchange(state, 0.0, answer([lease(1)]))
    state.stop_requested(hard=False, now=1.0, drain_seconds=5.0)
    assert sends(decide(state, 1.0)) == []  # nothing to say yet: the task may finish
    state.tick(6.0)
    out = decide(state, 6.0)
    assert [(i.task_id, i.reason) for i in out if isinstance(i, Stop)] == [
        (1, StopReason.SHUTDOWN)]
    state.answered(one_send(out).sync_id, answer(), 6.0)
    state.tick(6.0 + STOP_GRACE_SECONDS)
    leave = one_send(decide(state, 6.0 + STOP_GRACE_SECONDS))
    assert leave.request.leaving
    assert [(r.task_id, r.outcome) for r in leave.request.reports] == [(1, "released")]


def test_a_long_poll_given_up_at_shutdown_hands_back_what_it_brought() -> None:
    state = WorkerState(slots=1)
    poll = one_send(decide(state, 0.0))
    state.stop_requested(hard=False, now=1.0, drain_seconds=10.0)
    leave = one_send(decide(state, 1.0))  # not waiting for the poll
    assert leave.request.leaving
    state.answered(poll.sync_id, answer([lease(9)]), 1.1)  # answered after the stop
    assert starts(decide(state, 1.1)) == []
    state.answered(leave.sync_id, answer(), 1.2)
    # left already: the coordinator handed back everything at the leave
    assert decide(state, 1.2) == [Leave(told=True)]


def test_fewer_tasks_than_asked_means_no_asking_again_until_the_heartbeat() -> None:
    state = WorkerState(slots=2)
    out = exchange(state, 0.0, answer([lease(1)]))  # asked for 2, got 1: none left there
    assert starts(out) == [1] and sends(out) == []
    assert decide(state, 0.2) == []  # no spinning on an empty queue
    assert state.wake_at() == 0.0 + state.sync_seconds  # the next heartbeat
    send = one_send(decide(state, 3.01))
    assert send.request.free_slots == 1
    state.answered(send.sync_id, answer([lease(2)]), 3.02)  # got all it asked for
    out = decide(state, 3.02)
    assert starts(out) == [2]
