"""Blobs: immutable bytes named by their SHA-256, streamed in and out (Range supported).

Who may read or upload what is ``coordinator/services/blobs.py``'s to decide; this module
only speaks HTTP. A worker's upload names its attempt in ``X-Pilot-Attempt``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from parallel_pilot.coordinator.auth import ServicesDep, UserOrWorker
from parallel_pilot.coordinator.services import blobs
from parallel_pilot.coordinator.strict_route import StrictRoute, streamed_body
from parallel_pilot.core.protocol import ATTEMPT_HEADER, BlobInfo
from parallel_pilot.errors import InvalidInput

router = APIRouter(prefix="/blobs", tags=["blobs"], route_class=StrictRoute)


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
    more than the coordinator's ``max_upload_bytes`` too (413). A worker names the attempt
    the bytes are an output of (``X-Pilot-Attempt: <task id>/<attempt>``, one it holds),
    and its kind's output limit applies (413 naming it)."""
    return await blobs.receive(svc, caller, sha256, request.stream(),
                               declared=_declared_size(request),
                               attempt=request.headers.get(ATTEMPT_HEADER))


@router.head("/{sha256}")
def head_blob(svc: ServicesDep, caller: UserOrWorker, sha256: str) -> Response:
    path = blobs.readable_path(svc, caller, sha256)
    return Response(headers={"Content-Length": str(path.stat().st_size),
                             "Accept-Ranges": "bytes"})


@router.get("/{sha256}", response_class=FileResponse)
def get_blob(svc: ServicesDep, caller: UserOrWorker, sha256: str) -> FileResponse:
    """Download a blob; ``Range: bytes=a-b`` gives part of it (206)."""
    path = blobs.readable_path(svc, caller, sha256)
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})
