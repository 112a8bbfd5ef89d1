"""Users, API tokens (and web sessions, which are API token rows named as such: see
``coordinator.sessions.SESSION_TOKEN_NAME``) and join tokens."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from parallel_pilot.store.queries._common import Row, _new_id
from parallel_pilot.store.tables import (
    api_tokens,
    join_tokens,
    users,
)


def count_users(conn: sa.Connection) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one()


def insert_user(conn: sa.Connection, name: str, is_admin: bool, now: float) -> int:
    result = conn.execute(
        users.insert().values(name=name, is_admin=is_admin, disabled=False, created_at=now)
    )
    return _new_id(result)


def insert_api_token(conn: sa.Connection, user_id: int, token_hash: str, name: str,
                     now: float, expires_at: float | None = None) -> int:
    result = conn.execute(api_tokens.insert().values(
        user_id=user_id, token_hash=token_hash, name=name, created_at=now, expires_at=expires_at,
    ))
    return _new_id(result)


def user_by_token_hash(conn: sa.Connection, token_hash: str, now: float) -> Any:
    """The user of a live token (id, name, is_admin, the token's expires_at), or None."""
    return conn.execute(
        sa.select(users.c.id, users.c.name, users.c.is_admin, api_tokens.c.expires_at)
        .join(api_tokens, api_tokens.c.user_id == users.c.id)
        .where(api_tokens.c.token_hash == token_hash, api_tokens.c.revoked_at.is_(None),
               sa.or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > now),
               users.c.disabled.is_(False))
    ).first()


def insert_join_token(conn: sa.Connection, token_hash: str, name: str, now: float, *,
                      uses_left: int | None = None, expires_at: float | None = None,
                      approval_required: bool = False, max_slots: int | None = None) -> int:
    result = conn.execute(join_tokens.insert().values(
        token_hash=token_hash, name=name, created_at=now, uses_left=uses_left,
        expires_at=expires_at, approval_required=approval_required, max_slots=max_slots))
    return _new_id(result)


def user_by_name(conn: sa.Connection, name: str) -> Row | None:
    return conn.execute(sa.select(users).where(users.c.name == name)).first()


def set_password_hash(conn: sa.Connection, user_id: int, password_hash: str) -> bool:
    return bool(conn.execute(users.update().where(users.c.id == user_id)
                             .values(password_hash=password_hash)).rowcount)


def list_users(conn: sa.Connection) -> list[Row]:
    return list(conn.execute(
        sa.select(users.c.id, users.c.name, users.c.is_admin, users.c.disabled,
                  users.c.created_at).order_by(users.c.id)))


def disable_user(conn: sa.Connection, user_id: int) -> bool:
    return bool(conn.execute(users.update().where(users.c.id == user_id)
                             .values(disabled=True)).rowcount)


def list_api_tokens(conn: sa.Connection, user_id: int, *,
                    except_name: str | None = None) -> list[Row]:
    """The user's tokens that are not revoked (expired ones included, marked by expires_at);
    ``except_name`` leaves out the rows of that name (web sessions)."""
    where = [api_tokens.c.user_id == user_id, api_tokens.c.revoked_at.is_(None)]
    if except_name is not None:
        where.append(api_tokens.c.name != except_name)
    return list(conn.execute(
        sa.select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.created_at,
                  api_tokens.c.expires_at)
        .where(*where).order_by(api_tokens.c.id)))


def live_api_tokens_named(conn: sa.Connection, user_id: int, name: str,
                          now: float) -> list[Row]:
    """The user's tokens of this name that still work (not revoked, not expired), newest
    first: the browsers signed in as the user."""
    return list(conn.execute(
        sa.select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.created_at,
                  api_tokens.c.expires_at)
        .where(api_tokens.c.user_id == user_id, api_tokens.c.name == name,
               api_tokens.c.revoked_at.is_(None),
               sa.or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > now))
        .order_by(api_tokens.c.id.desc())))


def api_token_id_by_hash(conn: sa.Connection, token_hash: str) -> int | None:
    return conn.execute(sa.select(api_tokens.c.id)
                        .where(api_tokens.c.token_hash == token_hash)).scalar()


def revoke_api_token(conn: sa.Connection, token_id: int, user_id: int, now: float, *,
                     name: str | None = None) -> bool:
    """Revoke the user's token ``token_id`` (only if it has this ``name``, when given)."""
    where = [api_tokens.c.id == token_id, api_tokens.c.user_id == user_id,
             api_tokens.c.revoked_at.is_(None)]
    if name is not None:
        where.append(api_tokens.c.name == name)
    return bool(conn.execute(api_tokens.update().where(*where).values(revoked_at=now)).rowcount)


def join_token_by_hash(conn: sa.Connection, token_hash: str) -> Row | None:
    """The join token whatever its state (the caller says why an unusable one is refused)."""
    return conn.execute(sa.select(join_tokens).where(join_tokens.c.token_hash == token_hash)
                        ).first()


def join_token_by_id(conn: sa.Connection, token_id: int) -> Row | None:
    return conn.execute(sa.select(join_tokens).where(join_tokens.c.id == token_id)).first()


def use_join_token(conn: sa.Connection, token_id: int, now: float) -> bool:
    """Count one use of a join token; False if it was revoked, expired or used up meanwhile."""
    return bool(conn.execute(
        join_tokens.update().where(
            join_tokens.c.id == token_id, join_tokens.c.revoked_at.is_(None),
            sa.or_(join_tokens.c.expires_at.is_(None), join_tokens.c.expires_at > now),
            sa.or_(join_tokens.c.uses_left.is_(None), join_tokens.c.uses_left > 0))
        .values(uses_left=sa.case((join_tokens.c.uses_left.is_(None), None),
                                  else_=join_tokens.c.uses_left - 1))
    ).rowcount)


def list_join_tokens(conn: sa.Connection) -> list[Row]:
    return list(conn.execute(
        sa.select(join_tokens.c.id, join_tokens.c.name, join_tokens.c.created_at,
                  join_tokens.c.expires_at, join_tokens.c.uses_left, join_tokens.c.revoked_at,
                  join_tokens.c.approval_required, join_tokens.c.max_slots)
        .order_by(join_tokens.c.id)))


def revoke_join_token(conn: sa.Connection, token_id: int, now: float) -> bool:
    return bool(conn.execute(
        join_tokens.update().where(join_tokens.c.id == token_id,
                                   join_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)).rowcount)


def revoke_api_token_by_hash(conn: sa.Connection, token_hash: str, now: float) -> bool:
    """Revoke the API token with this hash (a web session ending at logout)."""
    return bool(conn.execute(
        api_tokens.update().where(api_tokens.c.token_hash == token_hash,
                                  api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)).rowcount)
