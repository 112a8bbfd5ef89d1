"""Structured logs (``pilot server --log-format json``): one JSON object per line, with the
request, job, user and worker a line is about.

``RequestLog`` (ASGI middleware) gives each HTTP request an id (the caller's
``X-Request-Id`` when it is a plain token, else a new one; sent back in the answer) and
a mutable set of fields for the request, which code anywhere below adds to with
``annotate(job_id=..., worker_id=...)``: the set is shared by reference, so what a
threadpool thread adds is seen by the whole request. ``JsonFormatter`` puts the fields
of the request a record was logged in into its line. In JSON mode every request is also
one ``pilot.access`` line (method, route template, status, milliseconds).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parallel_pilot.coordinator.metrics import Metrics, route_template

REQUEST_ID_HEADER = "X-Request-Id"
_GIVEN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a caller's id kept as it is
access_log = logging.getLogger("pilot.access")

_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "pilot_log_fields", default=None)


def annotate(**fields: Any) -> None:
    """Add ``fields`` to the current request's log fields (nothing outside a request)."""
    current = _fields.get()
    if current is not None:
        current.update((k, v) for k, v in fields.items() if v is not None)


def current_fields() -> dict[str, Any]:
    return dict(_fields.get() or {})


class RequestLog:
    """ASGI middleware: the request's id and log fields; once answered, its duration into
    ``metrics`` (paths under ``unmeasured`` left out) and its access line (``access``)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics | None = None,
                 unmeasured: tuple[str, ...] = (), access: bool = False) -> None:
        self.app, self.metrics, self.unmeasured, self.access = app, metrics, unmeasured, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode(), b"")
        text = given.decode("latin-1")
        request_id = text if _GIVEN_ID.match(text) else secrets.token_hex(8)
        fields: dict[str, Any] = {"request_id": request_id}
        token = _fields.set(fields)
        started = time.perf_counter()
        status = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds, route = time.perf_counter() - started, route_template(scope)
            if self.metrics is not None and not scope["path"].startswith(self.unmeasured):
                self.metrics.request_done(scope["method"], route, status[0], seconds)
            if self.access:
                access_log.info("%s %s %d", scope["method"], route, status[0], extra={
                    "method": scope["method"], "route": route, "status": status[0],
                    "ms": round(seconds * 1000, 2)})
            _fields.reset(token)


_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime"}


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: time (UTC, ISO 8601), level, logger, message, the
    request's fields, what the call passed as ``extra``, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(), **current_fields()}
        line.update((k, v) for k, v in record.__dict__.items() if k not in _RECORD_KEYS)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
