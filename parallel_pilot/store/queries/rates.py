"""Counters of events per (scope, subject, window) for the coordinator's rate limits
(``coordinator.services.rates``): one row per window, counted up in the caller's
transaction, so every coordinator process sharing the database counts together."""

from __future__ import annotations

import sqlalchemy as sa

from parallel_pilot.store.tables import rate_counts

_b = sa.bindparam
_WHERE = (rate_counts.c.scope == _b("b_scope"), rate_counts.c.subject == _b("b_subject"),
          rate_counts.c.window_start == _b("b_start"))
_BUMP = rate_counts.update().where(*_WHERE).values(count=rate_counts.c.count + 1)
_READ = sa.select(rate_counts.c.count).where(*_WHERE)


def count_event(conn: sa.Connection, scope: str, subject: int, window_start: float) -> int:
    """Count one event of ``subject`` in the window starting at ``window_start``; returns
    the window's count with it. The UPDATE locks the row, so concurrent events each see
    their own number."""
    key = {"b_scope": scope, "b_subject": subject, "b_start": window_start}
    if not conn.execute(_BUMP, key).rowcount:
        try:
            with conn.begin_nested():  # another transaction may start the window meanwhile
                conn.execute(rate_counts.insert().values(
                    scope=scope, subject=subject, window_start=window_start, count=1))
            return 1
        except sa.exc.IntegrityError:
            conn.execute(_BUMP, key)
    return int(conn.execute(_READ, key).scalar() or 0)


def forget_windows_before(conn: sa.Connection, scope: str, before: float) -> int:
    """Drop the counters of windows that started before ``before`` (done with)."""
    return conn.execute(rate_counts.delete().where(rate_counts.c.scope == scope,
                                                   rate_counts.c.window_start < before)
                        ).rowcount
