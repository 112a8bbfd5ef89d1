"""Blobs: who may read one, what a worker's upload is for, and which outputs a worker may
report. ``routes/blobs.py`` and the attempt reports (``leasing``, ``sync``) call this.

Who may read a blob: a user, the blobs they uploaded (``blob_readers``: every user who
sent the bytes, not only the first) and the inputs and outputs of their own jobs (admins:
every blob); a worker, the inputs of the tasks it holds now, the outputs of those tasks'
jobs, and what it uploaded itself. Anything else is "not found", exactly as a blob nobody
has, so a name never confirms that a blob exists.

Upload grants. A worker's upload names the attempt it is an output of, in the header
``X-Pilot-Attempt: <task_id>/<attempt>``; the bytes are taken only while that worker holds
that attempt, up to the size the task's kind allows (413 naming the limit), and recorded
against it (``attempt_uploads``). An output report (``/attempts/…/outputs``,
``/attempts/…/complete``, a completed report in a sync) is accepted only for blobs that
worker uploaded for that attempt, or that the attempt's own inputs name; anything else gets
one answer (``OutputNotUploaded``) whether the blob exists or not, and nothing of the
report is applied. So a worker that learned a hash cannot make it its job's output, and
with that neither read it nor put it among another job's results.

Why the lease itself and not a signed grant token handed out with the lease (BOINC's upload
certificates): BOINC signs because its upload handler is a separate server without the
scheduler's database. Every coordinator here reads the one database the lease is in, so
the lease row is the certificate: checked when the bytes arrive it ends with the lease
(lost, cancelled, settled elsewhere) with nothing to revoke, no signing key has to be
shared by every coordinator, and no secret travels in a lease where a log could keep it.
An upload for an attempt always sends the bytes (no "already have it" shortcut): only the
bytes prove the worker has them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.held import held_running_task
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.core.protocol import (
    ATTEMPT_HEADER,
    BlobInfo,
    OutputRequest,
    attempt_header,
    parse_attempt_header,
)
from parallel_pilot.errors import (
    BlobNotFound,
    InvalidInput,
    OutputNotUploaded,
    PayloadTooLarge,
)
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import allows_output, output_limit
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import copies as qc


@dataclass(frozen=True)
class GrantedOutput:
    """An output a report may record: the blob and its stored size."""

    path: str
    sha256: str
    size: int


# ---------------------------------------------------------------- reading


def may_read(conn: sa.Connection, caller: Caller | sa.Row, sha256: str) -> bool:
    """Whether ``caller`` may see the blob (cheapest checks first)."""
    if isinstance(caller, Caller):
        return caller.is_admin or any(check(conn, caller.user_id, sha256) for check in (
            q.blob_uploaded_by_user, q.blob_is_output_of_users_job,
            q.blob_is_input_of_users_job))
    return any(check(conn, caller.id, sha256) for check in (
        q.blob_is_input_of_held_task, q.blob_is_output_of_held_tasks_job,
        q.blob_uploaded_by_worker, qc.blob_is_input_of_copy,
        qc.blob_is_output_of_copys_job))


def readable_path(svc: Services, caller: Caller | sa.Row, sha256: str) -> Path:
    """The stored file of a blob ``caller`` may read; else ``BlobNotFound``, the same for a
    blob that is not the caller's as for one that does not exist."""
    path = svc.blobs.path(sha256)
    with svc.transaction() as conn:
        allowed = may_read(conn, caller, sha256)
    if not allowed or not path.is_file():
        raise BlobNotFound(f"no blob {sha256}")
    return path


# ---------------------------------------------------------------- uploading


@dataclass(frozen=True)
class _Target:
    """What an upload is for: a user's own blob, or an output of a worker's attempt."""

    limit: int
    too_large: str  # the 413 message's start, naming what the limit is for
    user_id: int | None = None
    worker_id: int | None = None
    task_id: int = 0
    attempt: int = 0


async def receive(svc: Services, caller: Caller | sa.Row, sha256: str,
                  chunks: AsyncIterator[bytes], declared: int | None,
                  attempt: str | None) -> BlobInfo:
    """``PUT /blobs/{sha256}``: store the streamed bytes (hash-checked) and record who sent
    them; a worker's upload names its attempt (``attempt``, the ``X-Pilot-Attempt``
    value) and is refused (409) unless the worker holds it now. Bigger than allowed
    (``Content-Length`` or counted while streaming): 413 naming the limit."""
    svc.blobs.path(sha256)  # validates the name before reading a byte
    if isinstance(caller, Caller):
        target = _Target(svc.settings.max_upload_bytes, "a blob may be at most",
                         user_id=caller.user_id)
    else:
        target = await run_in_threadpool(_attempt_target, svc, caller, attempt)
    if declared is not None and declared > target.limit:
        raise PayloadTooLarge(f"{target.too_large} {target.limit} bytes; this one has "
                              f"{declared}")
    try:
        size = await svc.blobs.write_stream(sha256, chunks, max_bytes=target.limit)
    except PayloadTooLarge:
        raise PayloadTooLarge(f"{target.too_large} {target.limit} bytes") from None
    await run_in_threadpool(_record, svc, target, sha256, size)
    return BlobInfo(sha256=sha256, size=size)


def _attempt_target(svc: Services, worker: sa.Row, attempt: str | None) -> _Target:
    if attempt is None:
        raise InvalidInput(f"a worker's upload names the attempt it is an output of: "
                           f"send {ATTEMPT_HEADER}: <task id>/<attempt>")
    try:
        task_id, number = parse_attempt_header(attempt)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    with svc.transaction() as conn:
        task = held_running_task(conn, worker, task_id, number)
    limit = min(svc.settings.max_upload_bytes,
                output_limit(get_kind(task.kind), task.payload, svc.settings.max_output_bytes))
    return _Target(limit, f"an output of a {task.kind} task ({ATTEMPT_HEADER}: "
                          f"{attempt_header(task_id, number)}) may be at most",
                   worker_id=worker.id, task_id=task_id, attempt=number)


def _record(svc: Services, target: _Target, sha256: str, size: int) -> None:
    now = svc.clock()
    with svc.transaction() as conn:
        q.insert_blob(conn, sha256, size, now, user_id=target.user_id,
                      worker_id=target.worker_id)
        if target.user_id is not None:  # every uploader may read the bytes, not only the first
            q.add_blob_reader(conn, sha256, target.user_id)
        if target.worker_id is not None:
            q.add_attempt_upload(conn, task_id=target.task_id, attempt=target.attempt,
                                 sha256=sha256, worker_id=target.worker_id, size=size,
                                 now=now)


def record_user_blobs(conn: sa.Connection, user_id: int, sizes: dict[str, int],
                      now: float) -> None:
    """Blobs a user sent by another way (the web forms): stored, and theirs to read."""
    for sha256, size in sizes.items():
        q.insert_blob(conn, sha256, size, now, user_id=user_id, worker_id=None)
        q.add_blob_reader(conn, sha256, user_id)


# ---------------------------------------------------------------- reporting


def granted_outputs(conn: sa.Connection, worker_id: int, task_id: int, attempt: int,
                    outputs: Sequence[OutputRequest],
                    inputs: dict[str, Any] | None = None, task: Any = None,
                    kind: str | None = None) -> list[GrantedOutput]:
    """The outputs of a report, each with its stored size, if every one was uploaded by
    this worker for this attempt or is one of the attempt's inputs (``inputs``: the task's,
    read here when needed and not given); else ``OutputNotUploaded`` for the first that is
    not, worded the same whether its blob exists or not. A kind that says which paths a
    task may report (``Kind.allows_output``: a cut render chunk, only its own frames) is
    asked about each, from the task's row (``task``, read when not given; ``kind`` names
    the task's kind so that a kind without the hook costs no read)."""
    if not outputs:
        return []
    if kind is None or hasattr(get_kind(kind), "allows_output"):
        _check_paths(conn, task_id, attempt, outputs, task)
    sizes = q.attempt_upload_sizes(conn, worker_id, task_id, attempt,
                                   (o.sha256 for o in outputs))
    rest = {o.sha256 for o in outputs} - sizes.keys()
    if rest:
        if inputs is None:
            task = q.get_task(conn, task_id)
            inputs = dict(task.inputs) if task is not None else {}
        named = rest & {str(v) for v in inputs.values()}
        sizes.update(q.blob_sizes(conn, named))
    for output in outputs:
        if output.sha256 not in sizes:
            raise OutputNotUploaded(
                f"output {output.path!r}: blob {output.sha256} was not uploaded for attempt "
                f"{attempt} of task {task_id} (upload it with {ATTEMPT_HEADER}: "
                f"{attempt_header(task_id, attempt)} first); nothing of the report was applied")
    return [GrantedOutput(o.path, o.sha256, sizes[o.sha256]) for o in outputs]


def _check_paths(conn: sa.Connection, task_id: int, attempt: int,
                 outputs: Sequence[OutputRequest], task: Any) -> None:
    task = task if task is not None else q.get_task(conn, task_id)
    if task is None:
        return  # the fence refuses the report
    kind = get_kind(task.kind)
    for output in outputs:
        if not allows_output(kind, task.payload, output.path):
            raise OutputNotUploaded(
                f"output {output.path!r} is not one of attempt {attempt} of task {task_id}'s "
                f"({task.name}); nothing of the report was applied")


def add_outputs(conn: sa.Connection, job_id: int, task_id: int, attempt: int,
                outputs: Sequence[GrantedOutput], now: float) -> None:
    for output in outputs:
        q.insert_output(conn, job_id=job_id, task_id=task_id, attempt=attempt,
                        path=output.path, sha256=output.sha256, size=output.size, now=now)
