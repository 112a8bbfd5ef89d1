"""Login tries per (client address, user name) in a fixed window: taken one at a time by a
conditional UPDATE, which the database applies atomically (a row lock on PostgreSQL and
MariaDB, the write lock on SQLite), so concurrent logins cannot all see room."""

from __future__ import annotations

import sqlalchemy as sa

from parallel_pilot.store.tables import login_tries


def take_login_try(conn: sa.Connection, login_key: str, now: float, window_seconds: float,
                   max_tries: int) -> bool:
    """Count one more try of ``login_key`` if its window has room (or is over: then a new
    window starts with this try); whether one was taken. False also when no row exists."""
    expired = now - window_seconds
    over = login_tries.c.window_start <= expired
    statement = (
        login_tries.update()
        .where(login_tries.c.login_key == login_key,
               sa.or_(login_tries.c.tries < max_tries, over))
        # MariaDB applies SET clauses left to right: tries first, while window_start is
        # still the old one
        .ordered_values(
            (login_tries.c.tries, sa.case((over, 1), else_=login_tries.c.tries + 1)),
            (login_tries.c.window_start, sa.case((over, now), else_=login_tries.c.window_start)),
        )
    )
    return conn.execute(statement).rowcount == 1


def insert_login_try(conn: sa.Connection, login_key: str, now: float) -> None:
    """The first try of ``login_key`` (IntegrityError if another request inserted it)."""
    conn.execute(login_tries.insert().values(login_key=login_key, tries=1, window_start=now))


def login_window_start(conn: sa.Connection, login_key: str) -> float | None:
    return conn.execute(sa.select(login_tries.c.window_start)
                        .where(login_tries.c.login_key == login_key)).scalar_one_or_none()


def clear_login_tries(conn: sa.Connection, login_key: str) -> None:
    conn.execute(login_tries.delete().where(login_tries.c.login_key == login_key))


def delete_old_login_tries(conn: sa.Connection, before: float) -> int:
    """Forget windows that started before ``before``; how many."""
    return conn.execute(login_tries.delete()
                        .where(login_tries.c.window_start < before)).rowcount
