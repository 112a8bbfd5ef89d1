"""The one seam through which workers, the SDK and the CLI talk to a coordinator.

``Connection`` wraps an ``httpx.Client``: base URL and bearer token, JSON bodies validated
against the wire models of ``core.protocol``, error bodies turned back into the
``PilotError`` classes, bounded retries while the coordinator cannot be reached (so a
restarting coordinator is waited for, not fatal), and streamed blob transfers.
Tests swap the transport (``httpx.ASGITransport`` or ``httpx.MockTransport``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from parallel_pilot.core.project import sha256_file  # noqa: F401  (re-exported)
from parallel_pilot.core.protocol import API_PREFIX
from parallel_pilot.errors import BlobMismatch, PilotError, ServerUnavailable, error_from_body

M = TypeVar("M", bound=BaseModel)

CONNECT_TIMEOUT = 10.0  # seconds to open a connection
READ_TIMEOUT = 60.0  # seconds to wait for a response (long polls add their own wait)
RETRY_SECONDS = 120.0  # how long a request keeps retrying while the coordinator is down
RETRY_BACKOFF_MAX = 5.0  # seconds between retries at most
CHUNK_BYTES = 1024 * 1024  # bytes per read when streaming blobs
EVENT_READ_TIMEOUT = 60.0  # seconds an event stream may stay silent (servers ping every 10)


class Connection:
    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        retry_seconds: float = RETRY_SECONDS,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.server = server.rstrip("/")
        self.retry_seconds = retry_seconds
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=self.server + API_PREFIX,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            transport=transport,
            headers={"User-Agent": "parallel-pilot"},
        )
        self.set_token(token)

    def set_token(self, token: str | None) -> None:
        if token:
            self._client.headers["Authorization"] = f"Bearer {token}"
        else:
            self._client.headers.pop("Authorization", None)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ JSON calls

    def call(
        self,
        method: str,
        path: str,
        response_model: type[M] | None = None,
        *,
        body: BaseModel | dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> Any:
        """One JSON request; returns the parsed ``response_model`` (or the raw JSON)."""
        content = None
        if isinstance(body, BaseModel):
            content = body.model_dump_json().encode()
        elif body is not None:
            content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else {}
        request_timeout = (httpx.Timeout(timeout, connect=CONNECT_TIMEOUT) if timeout
                           else httpx.USE_CLIENT_DEFAULT)
        response = self._send(
            lambda: self._client.request(method, path, content=content, params=params,
                                         headers=headers, timeout=request_timeout),
            retry=retry,
        )
        data = response.json() if response.content else None
        if response_model is None:
            return data
        return response_model.model_validate(data)

    def _send(self, do: Callable[[], httpx.Response], *, retry: bool) -> httpx.Response:
        deadline = time.monotonic() + (self.retry_seconds if retry else 0)
        delay = 0.25
        while True:
            try:
                response = do()
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.ConnectTimeout) as exc:
                if time.monotonic() >= deadline:
                    raise ServerUnavailable(
                        f"cannot reach the coordinator at {self.server}: {exc}"
                    ) from None
                self._sleep(delay)
                delay = min(delay * 2, RETRY_BACKOFF_MAX)
                continue
            except httpx.TimeoutException as exc:
                # not retried: the request may have been applied (a submit would repeat)
                raise ServerUnavailable(
                    f"the coordinator at {self.server} did not answer in time: {exc}"
                ) from None
            if response.status_code in (502, 503, 504) and time.monotonic() < deadline:
                self._sleep(delay)
                delay = min(delay * 2, RETRY_BACKOFF_MAX)
                continue
            if response.status_code >= 400:
                raise _error(response)
            return response

    # ------------------------------------------------------------ blobs

    def has_blob(self, sha256: str) -> bool:
        try:
            self._send(lambda: self._client.head(f"/blobs/{sha256}"), retry=True)
            return True
        except PilotError as exc:
            if exc.status == 404:
                return False
            raise

    def upload_blob(self, path: Path, sha256: str | None = None,
                    on_progress: Callable[[int], None] | None = None) -> str:
        """Upload ``path`` unless the coordinator already has it; returns its SHA-256."""
        sha256 = sha256 or sha256_file(path)
        if self.has_blob(sha256):
            return sha256

        def body():
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    if on_progress is not None:
                        on_progress(len(chunk))
                    yield chunk

        size = path.stat().st_size
        self._send(
            lambda: self._client.put(
                f"/blobs/{sha256}", content=body(),
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(size)},
            ),
            retry=True,
        )
        return sha256

    def download_blob(self, sha256: str, dest: Path,
                      on_progress: Callable[[int], None] | None = None) -> Path:
        """Stream a blob to ``dest`` (via a temporary file), checking its hash."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.25
        while True:
            try:
                digest = hashlib.sha256()
                with self._client.stream("GET", f"/blobs/{sha256}") as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error(response)
                    with open(tmp, "wb") as f:
                        for chunk in response.iter_bytes(CHUNK_BYTES):
                            digest.update(chunk)
                            f.write(chunk)
                            if on_progress is not None:
                                on_progress(len(chunk))
                break
            except httpx.TransportError as exc:
                if time.monotonic() >= deadline:
                    raise ServerUnavailable(
                        f"cannot download blob {sha256[:12]} from {self.server}: {exc}"
                    ) from None
                self._sleep(delay)
                delay = min(delay * 2, RETRY_BACKOFF_MAX)
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise BlobMismatch(f"downloaded blob {sha256[:12]} has the wrong hash")
        tmp.replace(dest)
        return dest


    # ------------------------------------------------------------ event streams

    def events(self, path: str, params: dict[str, Any] | None = None,
               read_timeout: float = EVENT_READ_TIMEOUT) -> Iterator[tuple[str, Any]]:
        """The ``(event, data)`` pairs of one server-sent event stream until the server
        ends it (``data`` parsed as JSON); comments (pings) and ``retry:`` are skipped."""
        timeout = httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT)
        with self._client.stream("GET", path, params=params, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise _error(response)
            name, data = "message", list[str]()
            for line in response.iter_lines():
                if not line:  # a blank line ends an event
                    if data:
                        yield name, json.loads("\n".join(data))
                    name, data = "message", []
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))


def _error(response: httpx.Response) -> PilotError:
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    return error_from_body(response.status_code, body)
