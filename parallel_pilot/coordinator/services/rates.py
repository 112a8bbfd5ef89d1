"""Rate limits on what workers do, counted in the database (every coordinator process
sharing it counts together) in fixed one-minute windows: new registrations per join
token, failure reports per worker. The login limiter (``coordinator.limits``) is apart."""

from __future__ import annotations

import math

import sqlalchemy as sa

from parallel_pilot.store.queries import rates as qr

WINDOW_SECONDS = 60.0  # length of one counting window
REGISTRATIONS = "join_token_registrations"  # scope: new workers per join token
FAILURE_REPORTS = "worker_failure_reports"  # scope: failure reports per worker


def window_start(now: float) -> float:
    return math.floor(now / WINDOW_SECONDS) * WINDOW_SECONDS


def count(conn: sa.Connection, scope: str, subject: int, limit: int, now: float,
          ) -> float | None:
    """Count one event of ``subject``; None while within ``limit`` this window, else the
    seconds until the window ends. The first event of a window drops the windows before
    the previous one."""
    start = window_start(now)
    n = qr.count_event(conn, scope, subject, start)
    if n == 1:
        qr.forget_windows_before(conn, scope, start - WINDOW_SECONDS)
    if n <= limit:
        return None
    return start + WINDOW_SECONDS - now
