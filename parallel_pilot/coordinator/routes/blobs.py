"""Blobs: immutable bytes named by their SHA-256, streamed in and out (Range supported).

Who may read a blob: a user, the blobs they uploaded (``blob_readers``: every user who
sent the bytes, not only the first) and the inputs and outputs of their
own jobs (admins: every blob); a worker, the inputs of the tasks it holds now, the outputs
of those tasks' jobs, and what it uploaded itself. Anything else is "not found", so a name
does not confirm that a blob exists. An upload always sends the bytes, hash-checked.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator.auth import ServicesDep, UserOrWorker
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.strict_route import StrictRoute, streamed_body
from parallel_pilot.core.protocol import BlobInfo
from parallel_pilot.errors import BlobNotFound, InvalidInput, PayloadTooLarge
from parallel_pilot.store import queries as q

router = APIRouter(prefix="/blobs", tags=["blobs"], route_class=StrictRoute)


def _record(svc: Services, sha256: str, size: int, caller: Caller | sa.Row) -> None:
    user_id = caller.user_id if isinstance(caller, Caller) else None
    worker_id = None if isinstance(caller, Caller) else caller.id
    with svc.transaction() as conn:
        q.insert_blob(conn, sha256, size, svc.clock(), user_id=user_id, worker_id=worker_id)
        if user_id is not None:  # every uploader may read the bytes, not only the first
            q.add_blob_reader(conn, sha256, user_id)


def may_read(conn: sa.Connection, caller: Caller | sa.Row, sha256: str) -> bool:
    """Whether ``caller`` may see the blob (cheapest checks first)."""
    if isinstance(caller, Caller):
        return caller.is_admin or any(check(conn, caller.user_id, sha256) for check in (
            q.blob_uploaded_by_user, q.blob_is_output_of_users_job,
            q.blob_is_input_of_users_job))
    return any(check(conn, caller.id, sha256) for check in (
        q.blob_is_input_of_held_task, q.blob_is_output_of_held_tasks_job,
        q.blob_uploaded_by_worker))


def _declared_size(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidInput("Content-Length must be a number of bytes")
    return int(raw)


@router.put("/{sha256}", response_model=BlobInfo,
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}, "required": True}})
@streamed_body
async def put_blob(svc: ServicesDep, caller: UserOrWorker, sha256: str,
                   request: Request) -> BlobInfo:
    """Upload bytes under their SHA-256; bytes that hash otherwise are refused (422), and
    more than the coordinator's ``max_upload_bytes`` too (413)."""
    svc.blobs.path(sha256)  # validates the name before reading a byte
    limit = svc.settings.max_upload_bytes
    declared = _declared_size(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"a blob may be at most {limit} bytes; this one has {declared}")
    # counted while streaming too: Content-Length may be absent (chunked) or wrong
    size = await svc.blobs.write_stream(sha256, request.stream(), max_bytes=limit)
    await run_in_threadpool(_record, svc, sha256, size, caller)
    return BlobInfo(sha256=sha256, size=size)


def _readable(svc: Services, caller: Caller | sa.Row, sha256: str) -> Path:
    path = svc.blobs.path(sha256)
    with svc.transaction() as conn:
        allowed = may_read(conn, caller, sha256)
    if not allowed or not path.is_file():
        raise BlobNotFound(f"no blob {sha256}")
    return path


@router.head("/{sha256}")
def head_blob(svc: ServicesDep, caller: UserOrWorker, sha256: str) -> Response:
    path = _readable(svc, caller, sha256)
    return Response(headers={"Content-Length": str(path.stat().st_size),
                             "Accept-Ranges": "bytes"})


@router.get("/{sha256}", response_class=FileResponse)
def get_blob(svc: ServicesDep, caller: UserOrWorker, sha256: str) -> FileResponse:
    """Download a blob; ``Range: bytes=a-b`` gives part of it (206)."""
    path = _readable(svc, caller, sha256)
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})
