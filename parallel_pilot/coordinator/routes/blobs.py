"""Blobs: immutable bytes named by their SHA-256, streamed in and out (Range supported)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator.auth import ServicesDep, UserOrWorker
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.core.protocol import BlobInfo
from parallel_pilot.errors import BlobNotFound
from parallel_pilot.store import queries as q

router = APIRouter(prefix="/blobs", tags=["blobs"])


def _record(svc, sha256: str, size: int, caller) -> None:  # type: ignore[no-untyped-def]
    user_id = caller.user_id if isinstance(caller, Caller) else None
    worker_id = None if isinstance(caller, Caller) else caller.id
    with svc.transaction() as conn:
        q.insert_blob(conn, sha256, size, svc.clock(), user_id=user_id, worker_id=worker_id)


@router.put("/{sha256}", response_model=BlobInfo,
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}, "required": True}})
async def put_blob(svc: ServicesDep, caller: UserOrWorker, sha256: str,
                   request: Request) -> BlobInfo:
    """Upload bytes under their SHA-256; bytes that hash otherwise are refused (422)."""
    svc.blobs.path(sha256)  # validates the name before reading a byte
    size = await svc.blobs.write_stream(sha256, request.stream())
    await run_in_threadpool(_record, svc, sha256, size, caller)
    return BlobInfo(sha256=sha256, size=size)


def _existing(svc, sha256: str):  # type: ignore[no-untyped-def]
    path = svc.blobs.path(sha256)
    if not path.is_file():
        raise BlobNotFound(f"no blob {sha256}")
    return path


@router.head("/{sha256}")
def head_blob(svc: ServicesDep, caller: UserOrWorker, sha256: str) -> Response:
    path = _existing(svc, sha256)
    return Response(headers={"Content-Length": str(path.stat().st_size),
                             "Accept-Ranges": "bytes"})


@router.get("/{sha256}", response_class=FileResponse)
def get_blob(svc: ServicesDep, caller: UserOrWorker, sha256: str) -> FileResponse:
    """Download a blob; ``Range: bytes=a-b`` gives part of it (206)."""
    path = _existing(svc, sha256)
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})
