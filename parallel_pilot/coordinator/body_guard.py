"""``BodyGuard``: the ASGI middleware that bounds every request body before it is read.

Each HTTP request gets a ``BodyBudget`` in its scope, the limit of the route it reaches
(``strict_route`` sets it once the route is known: JSON and form bodies
``max_body_bytes``, routes that take no token a small fixed budget, the streamed uploads
``max_upload_bytes``; the default until then is ``max_body_bytes``). A declared
Content-Length over the limit is answered 413 without reading a byte; a body without one
(chunked) is counted as it streams and cut off at the limit. A body that stops arriving
for ``body_stall_seconds`` ends the request with 408. Either way the answer says
``Connection: close``: the rest of the body is never read, and the connection goes."""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parallel_pilot.errors import PayloadTooLarge, PilotError, RequestTimeout, error_body

log = logging.getLogger("pilot.coordinator")

SCOPE_KEY = "pilot.body_budget"


class BodyBudget:
    """How much of one request's body may still come, and how long each piece may take."""

    def __init__(self, limit: int, stall_seconds: float, content_length: int | None) -> None:
        self.limit, self.stall_seconds = limit, stall_seconds
        self.content_length = content_length
        self.received = 0
        self.finished = False  # the last piece of the body arrived

    def set_limit(self, limit: int, what: str = "a request body") -> None:
        """The limit of the route reached; a declared length over it is refused now."""
        self.limit = limit
        self.check_declared(what)

    def check_declared(self, what: str = "a request body") -> None:
        if self.content_length is not None and self.content_length > self.limit:
            raise PayloadTooLarge(f"{what} may be at most {self.limit} bytes here; this one "
                                  f"declares {self.content_length}")

    def count(self, size: int) -> None:
        self.received += size
        if self.received > self.limit:
            raise PayloadTooLarge(f"a request body may be at most {self.limit} bytes here")


class BodyGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int,
                 stall_seconds: float) -> None:
        self.app = app
        self.max_body_bytes, self.stall_seconds = max_body_bytes, stall_seconds
        self.most = max(max_body_bytes, max_upload_bytes)  # what any route may allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budget = BodyBudget(self.max_body_bytes, self.stall_seconds, _content_length(scope))
        scope[SCOPE_KEY] = budget
        started = False
        if budget.content_length == 0 or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            budget.finished = budget.content_length in (0, None)  # no body is read

        async def guarded_receive() -> Message:
            if budget.finished:  # only a disconnect is left to wait for: no time limit
                return await receive()
            try:
                async with asyncio.timeout(budget.stall_seconds):  # no task per piece
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"the request body stopped arriving for "
                                     f"{budget.stall_seconds:g} s") from None
            if message["type"] == "http.request":
                budget.count(len(message.get("body", b"")))
                budget.finished = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not budget.finished:  # the rest of the body is never read: close
                    message = {**message, "headers": [
                        *[(k, v) for k, v in message.get("headers", [])
                          if k.lower() != b"connection"], (b"connection", b"close")]}
            await send(message)

        try:
            if budget.content_length is not None and budget.content_length > self.most:
                BodyBudget(self.most, 0, budget.content_length).check_declared()
            await self.app(scope, guarded_receive, guarded_send)
        except (PayloadTooLarge, RequestTimeout) as exc:
            if started:
                raise
            await _answer(send, exc)
            log.info("%s %s: %s", scope.get("method"), scope.get("path"), exc.message)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _answer(send: Send, exc: PilotError) -> None:
    body = json.dumps(error_body(exc)).encode()
    await send({"type": "http.response.start", "status": exc.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
