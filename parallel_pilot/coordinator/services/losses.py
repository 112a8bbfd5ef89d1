"""Leases lost with their worker: a worker that vanished (its lease expired), was revoked,
left, restarted, or never got the answer granting the lease did nothing wrong to the
task, so the task goes back to the queue without using an attempt (``tasks.failures``
counts only failures its attempts reported) and one loss is counted (``tasks.losses``).
A task lost ``max_losses`` times fails saying so: a task that takes its worker down every
time (out of memory, a machine that reboots) must not circle the farm for ever.

The attempt number stays the lease number: every lease is one up, whatever ended the
last, so a report from a lost attempt that comes back later is refused (fenced)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa

from parallel_pilot.coordinator.services import jobs, quorum, stragglers
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.store.queries import sync as qs


def lose(conn: sa.Connection, svc: Services, rows: Sequence[sa.Row], lines: Sequence[str],
         now: float) -> Counter[str]:
    """Held attempts (rows with id, job_id, attempt, kind, idx, name, losses) whose lease
    is lost, each with its log line: requeued with one loss counted, or failed (and maybe
    their job) at ``max_losses``; a task with a live backup copy goes on with the copy
    instead (``stragglers.carry_on``). Returns the tasks made ready per kind."""
    carried = stragglers.carry_on(conn, [(r, "lost with its worker") for r in rows], now,
                                  lost=1)
    if carried:
        kept = [(r, line) for r, line in zip(rows, lines, strict=True) if r.id not in carried]
        rows, lines = [r for r, _ in kept], [line for _, line in kept]
    cap = svc.settings.max_losses
    back = [r for r in rows if r.losses + 1 < cap]
    qs.requeue_lost(conn, [(r.id, r.attempt) for r in back])
    qs.insert_logs(conn, [(r.job_id, r.id, r.attempt, line)
                          for r, line in zip(rows, lines, strict=True)], now)
    for row, line in zip(rows, lines, strict=True):
        if row.losses + 1 < cap:
            continue
        reason = (f"lost {row.losses + 1} times with its worker (at most {cap}, "
                  f"max_losses); last: {line}")
        if qs.fail_lost(conn, row.id, row.attempt, reason, now) and \
                not quorum.absorb_failure(conn, svc, row):
            jobs.fail_job(conn, svc, row.job_id,
                          f"{jobs.task_label(row.idx, row.name)} failed: {reason}")
    return Counter(r.kind for r in back)
