"""The worker's side of the wire: one typed method per worker endpoint of the coordinator.

``CoordinatorLink`` wraps a ``parallel_pilot.http.Connection`` and is the only thing in the
worker that names URLs. Transport failures that ``Connection`` lets through as raw httpx
errors (a read timeout, say) come out as ``ServerUnavailable``, so callers handle one tree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from parallel_pilot.core.protocol import (
    Ack,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    LeaseRequest,
    LeaseResponse,
    OutputList,
    OutputRequest,
    RegisterRequest,
    RegisterResponse,
)
from parallel_pilot.errors import ServerUnavailable
from parallel_pilot.http import Connection

T = TypeVar("T")

log = logging.getLogger(__name__)

LEASE_READ_MARGIN = 15.0  # seconds a lease answer may take beyond the long-poll wait
HEARTBEAT_TIMEOUT = 15.0  # seconds to wait for a heartbeat answer
QUICK_CALL_TIMEOUT = 10.0  # seconds for calls made while shutting down (release, leave)


class CoordinatorLink:
    """Typed calls to the worker endpoints under ``/api/v1`` (see docs/architecture.md)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        # reports and uploads retry for minutes while the coordinator is away: say so
        connection.notify = _log_notice

    @property
    def server(self) -> str:
        return self.connection.server

    def set_token(self, token: str | None) -> None:
        self.connection.set_token(token)

    def close(self) -> None:
        self.connection.close()

    # ------------------------------------------------------------ workers

    def register(self, request: RegisterRequest) -> RegisterResponse:
        return self._call("POST", "/workers/register", RegisterResponse, request)

    def lease(self, request: LeaseRequest) -> LeaseResponse:
        return self._call("POST", "/workers/lease", LeaseResponse, request,
                          timeout=request.wait_seconds + LEASE_READ_MARGIN)

    def leave(self) -> Ack:
        return self._call("POST", "/workers/leave", Ack, None, timeout=QUICK_CALL_TIMEOUT,
                          retry=False)

    # ------------------------------------------------------------ attempts

    def heartbeat(self, task_id: int, attempt: int, request: HeartbeatRequest
                  ) -> HeartbeatResponse:
        # no retries inside Connection: the heartbeat loop retries itself and must keep
        # watching the lease expiry meanwhile
        return self._call("POST", _attempt(task_id, attempt, "heartbeat"), HeartbeatResponse,
                          request, timeout=HEARTBEAT_TIMEOUT, retry=False)

    def output(self, task_id: int, attempt: int, request: OutputRequest) -> Ack:
        return self._call("POST", _attempt(task_id, attempt, "outputs"), Ack, request)

    def job_outputs(self, task_id: int, attempt: int, prefix: str) -> OutputList:
        return self._get(_attempt(task_id, attempt, "job-outputs"), OutputList,
                         {"prefix": prefix})

    def complete(self, task_id: int, attempt: int, request: CompleteRequest) -> Ack:
        return self._call("POST", _attempt(task_id, attempt, "complete"), Ack, request)

    def fail(self, task_id: int, attempt: int, request: FailRequest) -> Ack:
        return self._call("POST", _attempt(task_id, attempt, "fail"), Ack, request)

    def release(self, task_id: int, attempt: int) -> Ack:
        return self._call("POST", _attempt(task_id, attempt, "release"), Ack, None,
                          timeout=QUICK_CALL_TIMEOUT, retry=False)

    # ------------------------------------------------------------ blobs

    def download_blob(self, sha256: str, dest: Path) -> Path:
        return _translated(lambda: self.connection.download_blob(sha256, dest), self.server)

    def upload_blob(self, path: Path) -> str:
        return _translated(lambda: self.connection.upload_blob(path), self.server)

    # ------------------------------------------------------------ plumbing

    def _get(self, path: str, model: type[Any], params: dict[str, Any]) -> Any:
        return _translated(lambda: self.connection.call("GET", path, model, params=params),
                           self.server)

    def _call(self, method: str, path: str, model: type[Any], body: BaseModel | None, *,
              timeout: float | None = None, retry: bool = True) -> Any:
        return _translated(
            lambda: self.connection.call(method, path, model, body=body, timeout=timeout,
                                         retry=retry),
            self.server,
        )


def _log_notice(line: str) -> None:
    log.warning("%s", line)


def _attempt(task_id: int, attempt: int, action: str) -> str:
    return f"/attempts/{task_id}/{attempt}/{action}"


def _translated(do: Callable[[], T], server: str) -> T:
    try:
        return do()
    except httpx.HTTPError as exc:
        raise ServerUnavailable(
            f"no answer from the coordinator at {server}: {type(exc).__name__}: {exc}"
        ) from None
