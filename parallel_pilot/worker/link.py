"""The worker's side of the wire: one typed method per worker endpoint of the coordinator
(register, the sync exchange, an attempt's outputs and its job's outputs, blobs).

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
    ATTEMPT_HEADER,
    Ack,
    OutputList,
    OutputRequest,
    RegisterRequest,
    RegisterResponse,
    SyncRequest,
    SyncResponse,
    attempt_header,
)
from parallel_pilot.errors import ServerUnavailable
from parallel_pilot.http import Connection

T = TypeVar("T")

log = logging.getLogger(__name__)

SYNC_TIMEOUT = 15.0  # seconds a sync answer may take beyond its long-poll wait


class CoordinatorLink:
    """Typed calls to the worker endpoints under ``/api/v1`` (see docs/architecture.md)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        # reports and uploads retry for minutes while the coordinator is away: say so
        connection.notify = _log_notice

    @property
    def server(self) -> str:
        """The coordinator calls go to now (one of the farm's, ``Connection``)."""
        return self.connection.server

    @property
    def farm(self) -> str:
        """The first coordinator URL given: the farm this worker's identity is kept for."""
        return self.connection.servers[0]

    def set_token(self, token: str | None) -> None:
        self.connection.set_token(token)

    def close(self) -> None:
        self.connection.close()

    # ------------------------------------------------------------ workers

    def register(self, request: RegisterRequest) -> RegisterResponse:
        return self._call("POST", "/workers/register", RegisterResponse, request)

    def sync(self, request: SyncRequest, timeout: float | None = None) -> SyncResponse:
        """One exchange. Never retried inside ``Connection``: the worker's loop keeps what
        the request carried and sends it again itself, watching its lease meanwhile."""
        return self._call("POST", "/workers/sync", SyncResponse, request,
                          timeout=timeout or request.wait_seconds + SYNC_TIMEOUT,
                          retry=False)

    # ------------------------------------------------------------ attempts

    def output(self, task_id: int, attempt: int, request: OutputRequest) -> Ack:
        return self._call("POST", _attempt(task_id, attempt, "outputs"), Ack, request)

    def job_outputs(self, task_id: int, attempt: int, prefix: str) -> OutputList:
        return self._get(_attempt(task_id, attempt, "job-outputs"), OutputList,
                         {"prefix": prefix})

    # ------------------------------------------------------------ blobs

    def download_blob(self, sha256: str, dest: Path) -> Path:
        return _translated(lambda: self.connection.download_blob(sha256, dest), self.server)

    def upload_output_blob(self, path: Path, sha256: str, task_id: int, attempt: int) -> str:
        """Upload ``path`` as an output of (task, attempt): always the bytes, under
        ``X-Pilot-Attempt`` (the coordinator records it against that attempt only)."""
        headers = {ATTEMPT_HEADER: attempt_header(task_id, attempt)}
        return _translated(lambda: self.connection.upload_blob(
            path, sha256, headers=headers, ask_first=False), self.server)

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
