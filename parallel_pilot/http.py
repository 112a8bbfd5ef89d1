"""The one seam through which workers, the SDK and the CLI talk to a coordinator.

``Connection`` wraps an ``httpx.Client``: base URL and bearer token, JSON bodies validated
against the wire models of ``core.protocol``, error bodies turned back into the
``PilotError`` classes, bounded retries while the coordinator cannot be reached (so a
restarting coordinator is waited for, not fatal), and streamed blob transfers.
Tests swap the transport (``httpx.ASGITransport`` or ``httpx.MockTransport``).

Retries: a connection that the coordinator has answered retries for ``retry_seconds``
(a restart); before its first answer it retries only ``first_contact_seconds``, so an
interactive client facing a coordinator that is not there fails at once. A retry that
may last ``NOTICE_MIN_SECONDS`` or more is announced through ``notify`` once per outage,
and so is the coordinator's return.

What is sent again: a request that cannot have reached the coordinator (the connection
was refused or never opened) always; once it may have reached it (a connection dropped
after sending), only a request that is safe to repeat (``replayable``): any but a POST,
a POST with an ``Idempotency-Key`` (the same key on every try, so the coordinator makes
one job of it), the worker's POSTs, whose reports are fenced per (task, attempt), and a
job's cancel. Others (a retry of a job, a new token) fail with ``ServerUnavailable``
saying the request may have been carried out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from parallel_pilot.core.project import sha256_file  # noqa: F401  (re-exported)
from parallel_pilot.core.protocol import API_PREFIX
from parallel_pilot.core.urls import split_servers
from parallel_pilot.errors import (
    BlobMismatch,
    PilotError,
    ServerUnavailable,
    error_from_body,
)

M = TypeVar("M", bound=BaseModel)

CONNECT_TIMEOUT = 10.0  # seconds to open a connection
READ_TIMEOUT = 60.0  # seconds to wait for a response (long polls add their own wait)
RETRY_SECONDS = 120.0  # how long a request keeps retrying while the coordinator is down
# interactive clients (Connection(interactive=True): the SDK's Client, hence the CLI)
INTERACTIVE_FIRST_CONTACT_SECONDS = 0.5  # seconds of retries before the first answer
INTERACTIVE_CONNECT_TIMEOUT = 3.0  # seconds to open a connection
NOTICE_MIN_SECONDS = 10.0  # retries that may last this long or more are announced
RETRY_BACKOFF_MAX = 5.0  # seconds between retries at most
CHUNK_BYTES = 1024 * 1024  # bytes per read when streaming blobs
EVENT_READ_TIMEOUT = 60.0  # seconds an event stream may stay silent (servers ping every 10)
START_HINT = "is it running? (pilot up, or pilot server)"
UNKNOWN_HOST_HINT = "is the host name right?"

log = logging.getLogger(__name__)

# the connection errors worth retrying: nothing reached the coordinator, or it went away
_UNREACHABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                httpx.WriteError, httpx.ConnectTimeout)
# of those, the ones raised before any byte of the request was sent
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
IDEMPOTENCY_HEADER = "Idempotency-Key"
# POSTs repeated safely without a key: the worker's exchange is fenced per (task, attempt)
# (a repeated report is refused or changes nothing; a lease whose answer was lost expires),
# and a job's cancel (a cancelled job stays cancelled)
_REPLAYABLE_POST = re.compile(r"^/(workers|attempts)/|^/jobs/\d+/cancel$")
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def idempotency_key() -> str:
    """A fresh key for one logical call that creates something (sent on each of its tries)."""
    return secrets.token_urlsafe(24)


def replayable(method: str, path: str, key: str | None = None) -> bool:
    """Whether a request may be sent again after it may have reached the coordinator."""
    method = method.upper()
    return (method in REPLAYABLE_METHODS or key is not None
            or (method == "POST" and _REPLAYABLE_POST.match(path) is not None))


class Connection:
    """Calls to the coordinators of one farm: ``server`` is one URL or several (a list, or
    separated by commas); calls go to one of them, and when it cannot be reached (no
    connection, or 502/503/504) the next is tried at once, then the next, and only after
    every one failed does the call wait before a new round. ``interactive`` is for people
    waiting at a prompt: a
    coordinator that never answered is given ``INTERACTIVE_FIRST_CONTACT_SECONDS`` and
    ``INTERACTIVE_CONNECT_TIMEOUT``; once it answered, outages are ridden out as for
    workers. ``notify`` receives the one-line notices of an outage (default: a warning
    on this module's logger)."""

    def __init__(
        self,
        server: str | Sequence[str],
        token: str | None = None,
        *,
        retry_seconds: float = RETRY_SECONDS,
        interactive: bool = False,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.servers = split_servers(server)
        self._current = 0  # index in servers of the one calls go to
        self._current_lock = threading.Lock()
        self.retry_seconds = retry_seconds
        self.first_contact_seconds = (INTERACTIVE_FIRST_CONTACT_SECONDS if interactive
                                      else float("inf"))
        self.connect_timeout = INTERACTIVE_CONNECT_TIMEOUT if interactive else CONNECT_TIMEOUT
        self.notify: Callable[[str], None] = notify or log.warning
        self._sleep = sleep
        self._clock = clock
        self._answered = False  # the coordinator has answered this connection at least once
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None  # monotonic time of the first failed try
        self._outage_announced = False
        self._client = httpx.Client(
            base_url=self.servers[0] + API_PREFIX,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=self.connect_timeout),
            transport=transport,
            headers={"User-Agent": "parallel-pilot"},
        )
        self.set_token(token)

    @property
    def server(self) -> str:
        """The coordinator calls go to now."""
        return self.servers[self._current]

    def _fail_over(self, failed: int) -> bool:
        """Send the next calls to the coordinator after ``failed`` (the index a try went
        to); False when there is no other. A switch made meanwhile by another thread is
        kept."""
        if len(self.servers) < 2:
            return False
        with self._current_lock:
            if self._current == failed:
                self._current = (failed + 1) % len(self.servers)
                self._client.base_url = httpx.URL(self.servers[self._current] + API_PREFIX)
                moved = True
            else:
                moved = False
        if moved and self._outage_since is None:  # within an outage its notice says it
            self.notify(f"the coordinator at {self.servers[failed]} cannot be reached; "
                        f"trying {self.servers[(failed + 1) % len(self.servers)]}")
        return True

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
        idempotency_key: str | None = None,
    ) -> Any:
        """One JSON request; returns the parsed ``response_model`` (or the raw JSON).
        ``idempotency_key`` (``idempotency_key()``, one per logical call) lets a POST that
        creates something be sent again after a dropped connection."""
        content = None
        if isinstance(body, BaseModel):
            content = body.model_dump_json().encode()
        elif body is not None:
            content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else {}
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        request_timeout = (httpx.Timeout(timeout, connect=self.connect_timeout) if timeout
                           else httpx.USE_CLIENT_DEFAULT)
        response = self._send(
            lambda: self._client.request(method, path, content=content, params=params,
                                         headers=headers, timeout=request_timeout),
            retry=retry, replay=replayable(method, path, idempotency_key),
        )
        data = response.json() if response.content else None
        if response_model is None:
            return data
        return response_model.model_validate(data)

    def _send(self, do: Callable[[], httpx.Response], *, retry: bool,
              replay: bool = True) -> httpx.Response:
        """Send, retrying while the coordinator cannot be reached; a request that is not
        ``replay``-able is sent again only when it cannot have reached the coordinator."""
        window = self.retry_window() if retry else 0.0
        deadline = self._clock() + window
        delay = 0.25
        untried = len(self.servers) - 1  # others to try at once before waiting
        while True:
            current = self._current
            try:
                response = do()
            except _UNREACHABLE as exc:
                if not replay and not isinstance(exc, _NOT_SENT):
                    self._fail_over(current)  # the next call goes elsewhere
                    raise ServerUnavailable(
                        f"the connection to the coordinator at {self.servers[current]} "
                        f"dropped after the request was sent ({_reason(exc)}); it was not "
                        "sent again, as it may have been carried out: check before "
                        "repeating it") from None
                if untried > 0 and self._fail_over(current):
                    untried -= 1
                    continue
                if self._clock() >= deadline:
                    raise self._gave_up(exc, window) from None
                self._unreachable(exc, window)
                self._sleep(max(0.0, min(delay, deadline - self._clock())))
                delay = min(delay * 2, RETRY_BACKOFF_MAX)
                untried = len(self.servers) - 1
                self._fail_over(self._current)
                continue
            except httpx.TimeoutException as exc:
                # not retried: the request may have been applied (a submit would repeat)
                raise ServerUnavailable(
                    f"the coordinator at {self.server} did not answer in time: {exc}"
                ) from None
            # a gateway's 502/504 may come after the coordinator did the work; 503: it did not
            retry_status = (502, 503, 504) if replay else (503,)
            if response.status_code in retry_status and untried > 0 \
                    and self._fail_over(current):
                untried -= 1
                continue
            if response.status_code in retry_status and self._clock() < deadline:
                self._unreachable(f"HTTP {response.status_code}", window)
                self._sleep(max(0.0, min(delay, deadline - self._clock())))
                delay = min(delay * 2, RETRY_BACKOFF_MAX)
                untried = len(self.servers) - 1
                self._fail_over(self._current)
                continue
            self._answer()
            if response.status_code >= 400:
                raise _error(response)
            return response

    # ------------------------------------------------------------ outages

    def retry_window(self) -> float:
        """Seconds a call retries while the coordinator cannot be reached."""
        if self._answered:
            return self.retry_seconds
        return min(self.retry_seconds, self.first_contact_seconds)

    def _unreachable(self, cause: httpx.HTTPError | str, window: float) -> None:
        """A try failed and will be repeated for up to ``window`` seconds."""
        with self._outage_lock:
            if self._outage_since is None:
                self._outage_since = self._clock()
            if self._outage_announced or window < NOTICE_MIN_SECONDS:
                return
            self._outage_announced = True
        self.notify(f"cannot reach {self._where()} ({_reason(cause)}); "
                    f"retrying for up to {window:.0f} s…")

    def _answer(self) -> None:
        """The coordinator answered (any status)."""
        self._answered = True
        with self._outage_lock:
            since, announced = self._outage_since, self._outage_announced
            self._outage_since, self._outage_announced = None, False
        if announced and since is not None:
            self.notify(f"the coordinator at {self.server} answers again "
                        f"(after {self._clock() - since:.0f} s)")

    def _gave_up(self, exc: httpx.HTTPError, window: float) -> ServerUnavailable:
        with self._outage_lock:
            self._outage_announced = False  # the next call that waits says so again
        waited = f" for {window:.0f} s" if window >= NOTICE_MIN_SECONDS else ""
        return ServerUnavailable(f"cannot reach {self._where()} "
                                 f"{_cause_and_hint(exc, waited)}")

    def _where(self) -> str:
        if len(self.servers) == 1:
            return f"the coordinator at {self.servers[0]}"
        return f"any of the coordinators at {', '.join(self.servers)}"

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
                    on_progress: Callable[[int], None] | None = None,
                    headers: dict[str, str] | None = None, ask_first: bool = True) -> str:
        """Upload ``path`` unless the coordinator already has it (``ask_first``: a HEAD
        first; a worker's output always sends its bytes); returns its SHA-256.
        ``headers`` go with the upload (a worker's ``X-Pilot-Attempt``)."""
        sha256 = sha256 or sha256_file(path)
        if ask_first and self.has_blob(sha256):
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
                         "Content-Length": str(size), **(headers or {})},
            ),
            retry=True,
        )
        return sha256

    def download_blob(self, sha256: str, dest: Path,
                      on_progress: Callable[[int], None] | None = None) -> Path:
        """Stream a blob to ``dest`` (via a temporary file), checking its hash."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        window = self.retry_window()
        deadline = self._clock() + window
        delay = 0.25
        while True:
            try:
                digest = hashlib.sha256()
                with self._client.stream("GET", f"/blobs/{sha256}") as response:
                    self._answer()
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
                if self._clock() >= deadline:
                    raise ServerUnavailable(
                        f"cannot download blob {sha256[:12]} from {self.server} "
                        f"{_cause_and_hint(exc)}"
                    ) from None
                self._unreachable(exc, window)
                self._sleep(max(0.0, min(delay, deadline - self._clock())))
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
        ends it (``data`` parsed as JSON); comments (pings) and ``retry:`` are skipped.

        Not retried here: a dropped stream is the caller's to reopen (``Client.watch``
        does, for ``retry_seconds``), so failing to reach the coordinator is announced as
        an outage and raised as the httpx error; but an interactive connection that was
        never answered raises ``ServerUnavailable``: there is nothing to wait for yet."""
        timeout = httpx.Timeout(read_timeout, connect=self.connect_timeout)
        with contextlib.ExitStack() as stack:
            try:
                response = stack.enter_context(
                    self._client.stream("GET", path, params=params, timeout=timeout))
            except _UNREACHABLE as exc:
                if self.retry_window() < self.retry_seconds:  # never answered, interactive
                    raise self._gave_up(exc, 0.0) from None
                self._unreachable(exc, self.retry_seconds)
                raise
            self._answer()
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


def _reason(cause: httpx.HTTPError | str) -> str:
    """Why the coordinator could not be reached, in a few words."""
    if isinstance(cause, str):
        return cause
    text = str(cause)
    lowered = text.lower()
    if isinstance(cause, httpx.ConnectTimeout):
        return "no answer to a connection request"
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "name resolution" in lowered or \
            "nodename nor servname" in lowered or "no address associated" in lowered:
        return "unknown host"
    if isinstance(cause, (httpx.RemoteProtocolError, httpx.ReadError)):
        return "the connection was dropped"
    return text or type(cause).__name__


def _cause_and_hint(exc: httpx.HTTPError, waited: str = "") -> str:
    """``(connection refused); is it running? …``: the reason, then what to check."""
    reason = _reason(exc)
    hint = UNKNOWN_HOST_HINT if reason == "unknown host" else START_HINT
    return f"({reason}){waited}; {hint}"


def _error(response: httpx.Response) -> PilotError:
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    return error_from_body(response.status_code, body)
