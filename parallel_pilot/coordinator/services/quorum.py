"""Quorum dependencies: a task that waits for all its dependencies, or for ``quorum`` of them
once its deadline has passed (a training round's aggregate step waits for the workers'
weight changes, but not forever for a worker that vanished).

The rule, checked whenever a dependency is done or fails for good, and by the reaper once
the deadline passes (``deadline_seconds`` after the first dependency was done):

- at least ``quorum`` deps done, and the deadline passed or no dep is still open: the
  task becomes ready; the deps not done are *skipped* — open ones cancelled (a worker still
  running one is told to stop), failed ones left failed — and no longer hold up the job;
- fewer deps done and still open than ``quorum``: the quorum cannot be met, the job fails;
- otherwise it keeps waiting.

A dependency that fails for good, when all its dependents wait with a quorum, does not fail
the job by itself: its dependents decide. What a skipped task meant (e.g. a shard to train
again next round) is the kind's business.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from parallel_pilot.coordinator.services import jobs
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.core.states import TaskState
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import quorum as qq

log = logging.getLogger("pilot.quorum")

QUORUM_BATCH = 200  # quorum tasks past their deadline looked at per reaper pass
SKIP_REASON = "left out: its dependent went ahead on a quorum without it"


def after_dependency_done(conn: sa.Connection, svc: Services, task_id: int) -> None:
    """A task is done: start its quorum dependents' deadlines and check their quorum."""
    now = svc.clock()
    qq.start_quorum_deadlines(conn, task_id, now)
    for dependent in qq.blocked_quorum_dependents(conn, task_id):
        settle(conn, svc, dependent, now)


def absorb_failure(conn: sa.Connection, svc: Services, task: sa.Row) -> bool:
    """A task failed for good. When every dependent waits with a quorum, the failure does
    not fail the job: the dependents' quorum decides (returns True). Else returns False."""
    if not qq.has_only_quorum_dependents(conn, task.id):
        return False
    now = svc.clock()
    for dependent in qq.blocked_quorum_dependents(conn, task.id):
        settle(conn, svc, dependent, now)
    return True


def settle(conn: sa.Connection, svc: Services, task: sa.Row, now: float) -> str:
    """Apply the quorum rule to one blocked quorum task: "released", "failed" or
    "waiting"."""
    deps = qq.dependency_states(conn, task.id)
    done = [d.id for d in deps if d.state == TaskState.DONE]
    open_ = [d.id for d in deps if d.state in qq.OPEN_STATES]
    quorum = min(int(task.quorum), len(deps))
    if len(done) + len(open_) < quorum:
        jobs.fail_job(conn, svc, task.job_id,
                      f"{jobs.task_label(task.idx, task.name)} cannot reach its quorum: "
                      f"{len(done)} of "
                      f"{len(deps)} dependencies done, {len(open_)} still running, "
                      f"{quorum} needed")
        return "failed"
    passed = task.deadline_at is not None and task.deadline_at <= now
    if len(done) < quorum or (open_ and not passed):
        return "waiting"
    left_out = [d.id for d in deps if d.state != TaskState.DONE]
    if left_out:
        qq.skip_tasks(conn, left_out, now, SKIP_REASON)
        # a skipped task counts as settled for the job's completion counter
        newly = [d for d in deps if d.state != TaskState.DONE and not d.skipped]
        q.add_job_done(conn, task.job_id, len(newly))
        log.info("task %d (%s) goes ahead with %d of %d dependencies", task.id, task.name,
                 len(done), len(deps))
    qq.release_quorum_task(conn, task.id)
    return "released"


def release_due(svc: Services) -> int:
    """Reaper pass: settle quorum tasks whose deadline passed; returns how many went ahead
    or failed."""
    now = svc.clock()
    changed = 0
    with svc.transaction() as conn:
        for task in qq.due_quorum_tasks(conn, now, QUORUM_BATCH):
            if settle(conn, svc, task, now) != "waiting":
                changed += 1
    if changed:
        svc.notifier.notify()
    return changed
