"""Server-sent event streams of changes: a snapshot is taken every ``poll`` seconds and the
entries that changed since the last one are sent as one event.

Used by the API (``GET /api/v1/jobs/{id}/events``) and by the dashboard's live pages. A
stream lasts at most ``seconds``; clients reconnect (an ``EventSource`` by itself, after
``retry``) and get the whole snapshot again, so they catch up after any drop. A stream ends
with ``event: done`` once the snapshot says it is finished, and with ``event: gone`` when
the thing watched is no longer visible to the caller (a 4xx-style ``PilotError``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from parallel_pilot.errors import PilotError

POLL_SECONDS = 1.0  # how often a stream looks for changes
PING_SECONDS = 10.0  # a comment line this often keeps proxies from closing a quiet stream
RETRY_MS = 1000  # a browser's reconnect delay after a stream ends or drops
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

# () -> (entries by key, finished); keys whose value changed are sent
Snapshot = Callable[[], tuple[dict[str, Any], bool]]


def sse_event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


async def changes(request: Request, snapshot: Snapshot, *, event: str, seconds: float,
                  poll: float | None = None) -> AsyncIterator[str]:
    poll = POLL_SECONDS if poll is None else poll
    yield f"retry: {RETRY_MS}\n\n"
    sent: dict[str, Any] = {}
    started = last_output = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            entries, finished = await run_in_threadpool(snapshot)
        except PilotError as exc:  # gone for this caller, or the session ended
            yield sse_event("gone", {"error": exc.code, "message": exc.message})
            return
        changed = {k: v for k, v in entries.items() if sent.get(k) != v}
        if changed:
            sent.update(changed)
            yield sse_event(event, changed)
            last_output = time.monotonic()
        elif time.monotonic() - last_output > PING_SECONDS:
            yield ": ping\n\n"
            last_output = time.monotonic()
        if finished:
            yield sse_event("done", {})
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll)


def stream_changes(request: Request, snapshot: Snapshot, *, event: str,
                   seconds: float) -> StreamingResponse:
    return StreamingResponse(changes(request, snapshot, event=event, seconds=seconds),
                             media_type="text/event-stream", headers=HEADERS)
