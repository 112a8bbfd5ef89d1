"""What the coordinator believes of a worker, and what one worker may do to a job.

A worker is a stranger: what it says about itself is a claim, and its failure reports
are evidence. The rules (docs/security.md, "What a worker may do"):

* **Identity.** A worker is its row (id and worker token, which the worker keeps in its
  identity file and sends back when it restarts: the same row, counts and all) and the
  join token it joined with. A new registration (a new name, a lost identity file) is a
  new row but the same join token, and keeps every per-token count.
* **Slots.** The coordinator allows ``min(claimed slots, max_worker_slots, the join
  token's max_slots)``; a worker holds at most its allowed slots plus the prefetch the
  coordinator allows (``max_prefetch``), across the exchange and ``/workers/lease``.
  Its GPU slots are capped the same way, apart: ``min(claimed GPUs, max_worker_slots,
  the join token's max_slots)``; tasks that need GPUs are held at most that many GPUs'
  worth at once, counted from the requirement sets of the attempts it holds (never from
  its word), with no prefetch.
* **Failures and blocks.** Every failed attempt counts against the worker's row and,
  for an untrusted worker, against its join token, per job: a worker is kept off a job
  after ``worker_block_failures`` of its own, and every untrusted worker of a join token
  after ``join_token_block_failures`` of the token's. More than
  ``worker_failures_per_minute`` failure reports pause the worker (no new tasks) until
  the minute is over, and those reports are not counted as its word on the task.
* **``retryable=false``** ends a task (and maybe its job) with attempts left only when
  the worker is trusted or ``nonretryable_agreement`` distinct identities (join tokens)
  said so for that task; otherwise it is one failed attempt, the task is requeued and
  offered to other workers first. A task whose attempts run out on such reports fails
  as "a retry cannot help" all the same.
* **A failure that repeats** fails the task at once, attempts left or not: when
  ``repeat_failure_voices`` (2) distinct voices report it failing with the same
  normalised reason (``core.reasons``: paths, numbers and ids taken out) — a scene error,
  a missing file, a bad command — another worker would only fail it again. A voice is the
  join token of an untrusted worker (its registrations are one voice) and the row of a
  trusted one (an admin vouched for that machine alone). Reports of a paused worker are
  not counted.
* **Losses are not failures.** A lease lost with its worker (expired, revoked, left,
  restarted) uses no attempt and counts against neither the worker nor its join token
  (``services.losses``): under churn a task never at fault keeps its attempts.
* **Claims.** A ``sandbox`` requirement is met only by a worker that claims a sandbox
  and that an admin marked trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import sqlalchemy as sa

from parallel_pilot.coordinator.services import rates
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.core.reasons import reason_key
from parallel_pilot.store.queries import verdicts as qv
from parallel_pilot.store.queries import workers as qw


def allowed_slots(svc: Services, claimed: int, token_max: int | None) -> int:
    """The slots a worker is given: its claim, capped by the farm and its join token."""
    return max(1, min(claimed, svc.settings.max_worker_slots, token_max or claimed))


def allowed_gpu_slots(svc: Services, claimed: int, token_max: int | None) -> int:
    """The GPU slots a worker is given: the GPUs it claims, capped like its slots (none
    when it claims none)."""
    return max(0, min(claimed, svc.settings.max_worker_slots, token_max or claimed))


def gpu_slots_now(svc: Services, worker: sa.Row, claimed: int) -> int:
    """The GPUs a worker holds GPU tasks for now (``slots_now``'s rule; rows from before
    GPU slots have no ``gpu_slots``: the GPUs claimed, capped by the farm)."""
    given = worker.gpu_slots if worker.gpu_slots is not None else claimed
    return max(0, min(given, claimed, svc.settings.max_worker_slots))


def slots_now(svc: Services, worker: sa.Row, claimed: int) -> int:
    """The slots a worker holds tasks for now (the farm's cap applies at once when an
    admin lowers it; rows from before the cap existed have no ``slots``)."""
    given = worker.slots if worker.slots is not None else claimed
    return max(1, min(given, claimed, svc.settings.max_worker_slots))


def identity(worker: sa.Row) -> str:
    """Whose word a report is: the join token (so new registrations are one voice), or
    the row for a worker that joined before join tokens were recorded."""
    if worker.join_token_id is not None:
        return f"join-token:{worker.join_token_id}"
    return f"worker:{worker.id}"


def token_of(worker: sa.Row) -> int | None:
    """The join token whose count the worker's failures add to and whose block applies to
    it; None for a trusted worker (an admin vouched for this machine alone)."""
    return None if worker.trusted else worker.join_token_id


class Weighed(NamedTuple):
    """What one failed attempt leads to: ``retry`` it, or not; ``repeated`` names the
    voices that reported the same reason when that is why not (a scene error)."""

    retry: bool
    repeated: tuple[str, ...] = ()


def voice(worker: sa.Row) -> str:
    """Whose report a failure reason is: ``identity`` for an untrusted worker, the row for
    a trusted one (an admin vouched for this machine alone)."""
    return f"worker:{worker.id}" if worker.trusted else identity(worker)


def weigh_failure(conn: sa.Connection, svc: Services, worker: sa.Row, task: sa.Row,
                  retryable: bool, now: float, reason: str | None = None) -> Weighed:
    """Count one failed attempt of ``task`` (held by ``worker``) and decide whether it is
    retried: yes unless the same ``reason`` came from enough voices, or the worker said a
    retry cannot help and that is believed (see the module docstring), or no attempts are
    left."""
    qw.record_worker_failure(conn, worker.id, task.job_id, token_of(worker))
    too_fast = rates.count(conn, rates.FAILURE_REPORTS, worker.id,
                           svc.settings.worker_failures_per_minute, now)
    if too_fast is not None:
        qw.pause_worker(conn, worker.id, now + too_fast)
    attempts_left = task.failures + 1 < task.max_attempts
    if too_fast is not None:
        return Weighed(attempts_left)
    repeated = _same_reason_voices(conn, svc, worker, task, reason, now)
    if not retryable:
        qv.record_nonretryable(conn, task_id=task.id, attempt=task.attempt,
                               job_id=task.job_id, worker_id=worker.id,
                               identity=identity(worker), now=now)
        if not attempts_left or worker.trusted:
            return Weighed(False)
        agreeing = qv.nonretryable_identities(conn, task.id)
        if len(agreeing) >= svc.settings.nonretryable_agreement:
            return Weighed(False)
    if attempts_left and repeated:
        return Weighed(False, repeated)
    return Weighed(attempts_left)


def _same_reason_voices(conn: sa.Connection, svc: Services, worker: sa.Row, task: sa.Row,
                        reason: str | None, now: float) -> tuple[str, ...]:
    """Record the attempt's normalised reason; the voices that reported it for this task
    when they are ``repeat_failure_voices`` or more, else ()."""
    key = reason_key(reason)
    if key is None:
        return ()
    qv.record_failure_reason(conn, task_id=task.id, attempt=task.attempt, job_id=task.job_id,
                             worker_id=worker.id, voice=voice(worker), reason_key=key,
                             now=now)
    voices = qv.voices_with_reason(conn, task.id, key)
    if len(voices) < svc.settings.repeat_failure_voices:
        return ()
    return tuple(sorted(voices))


def repeat_note(weighed: Weighed) -> str:
    """Why a task failed fast on a repeated reason (``task N failed <this>: <reason>``)."""
    return (f"the same way on {len(weighed.repeated)} workers of different join tokens "
            "(or trusted workers), so another would fail it again")


def doubt_note(retryable: bool, retried: bool) -> str:
    """What the task's error adds when a worker's "a retry cannot help" was not taken."""
    if retryable or not retried:
        return ""
    return ("; the worker said a retry cannot help, which is taken as final only when "
            "workers of another join token agree (or the worker is trusted): retried")


def offer_elsewhere_first(conn: sa.Connection, worker_id: int,
                          candidates: Sequence[sa.Row]) -> list[sa.Row]:
    """Candidates this worker said it cannot do go last (another worker may take them)."""
    failed = [c.id for c in candidates if c.failures]
    if not failed:
        return list(candidates)
    refused = qv.refused_by_worker(conn, worker_id, failed)
    return sorted(candidates, key=lambda c: c.id in refused)
