"""One task's heartbeat, beat by beat with a fake clock: lines carried and kept on failure,
the lease given up only after it has run out, and stop answers obeyed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from parallel_pilot.core.protocol import HeartbeatRequest, HeartbeatResponse, TaskLease
from parallel_pilot.errors import PilotError, ServerUnavailable, StaleAttempt
from parallel_pilot.worker.cache import BlobCache
from parallel_pilot.worker.context import StopReason, TaskContext
from parallel_pilot.worker.heartbeat import Heartbeat


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeLink:
    """Answers heartbeats with whatever ``answers`` holds next (an answer or an error)."""

    def __init__(self, *answers: HeartbeatResponse | PilotError) -> None:
        self.answers = list(answers)
        self.sent: list[HeartbeatRequest] = []

    def heartbeat(self, task_id: int, attempt: int, request: HeartbeatRequest) -> Any:
        self.sent.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, PilotError):
            raise answer
        return answer


def go(action: str = "continue", reason: str | None = None) -> HeartbeatResponse:
    return HeartbeatResponse(action=action, reason=reason, lease_expires_at=0.0)  # type: ignore[arg-type]


@pytest.fixture
def ctx(tmp_path: Path):
    lease = TaskLease(task_id=1, attempt=1, job_id=1, kind="sleep", name="sleep 0",
                      payload={}, inputs={}, lease_expires_at=0.0, heartbeat_seconds=1.0)
    context = TaskContext(lease, link=None, cache=BlobCache(tmp_path / "c", 0),  # type: ignore[arg-type]
                          work_root=tmp_path / "w")
    yield context
    context.close()


def heartbeat(ctx: TaskContext, link: FakeLink, clock: FakeClock) -> Heartbeat:
    return Heartbeat(ctx.task, ctx, link, lease_seconds=30.0, leased_at=clock(),  # type: ignore[arg-type]
                     clock=clock)


def test_carries_progress_and_lines(ctx: TaskContext) -> None:
    clock, link = FakeClock(), FakeLink(go(), go())
    beat = heartbeat(ctx, link, clock)
    ctx.progress(0.25, "frame 3 of 12")
    ctx.log("rendering")
    assert beat.beat()
    assert link.sent[0].progress == 0.25 and link.sent[0].message == "frame 3 of 12"
    assert link.sent[0].log_lines == ["rendering"]
    assert beat.beat() and link.sent[1].log_lines == []


def test_failed_beats_keep_lines_until_the_lease_runs_out(ctx: TaskContext) -> None:
    down = ServerUnavailable("cannot reach the coordinator")
    clock, link = FakeClock(), FakeLink(down, down, go(), down)
    beat = heartbeat(ctx, link, clock)
    ctx.log("first")
    assert beat.beat()  # failed, lease still fresh
    ctx.log("second")
    clock.now += 20
    assert beat.beat()  # failed again, 20 s < 30 s lease
    assert beat.beat()  # got through: both lines delivered, in order
    assert link.sent[2].log_lines == ["first", "second"]
    assert not ctx.stop_event.is_set()
    clock.now += 31
    assert not beat.beat()  # 31 s since the last beat that got through: lease lost
    assert ctx.stop_reason is StopReason.LEASE_LOST and ctx.stop_event.is_set()


def test_stop_answer_sets_the_stop_event(ctx: TaskContext) -> None:
    beat = heartbeat(ctx, FakeLink(go("stop", "job cancelled")), FakeClock())
    assert not beat.beat()
    assert ctx.stop_reason is StopReason.COORDINATOR
    assert ctx.stop_detail is not None and "job cancelled" in ctx.stop_detail


def test_stale_attempt_sets_the_stop_event(ctx: TaskContext) -> None:
    beat = heartbeat(ctx, FakeLink(StaleAttempt()), FakeClock())
    assert not beat.beat()
    assert ctx.stop_reason is StopReason.COORDINATOR
