"""Accounts: users and their passwords, users' own API tokens, the browsers signed in as
them (web sessions: token rows of their own name, listed apart from the API tokens),
worker join tokens, and revoking a worker (its leases go back to the queue without
counting a failure)."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from parallel_pilot.coordinator.passwords import hash_password
from parallel_pilot.coordinator.services import losses, stragglers
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.sessions import SESSION_TOKEN_NAME
from parallel_pilot.coordinator.tokens import (
    JOIN_TOKEN_PREFIX,
    USER_TOKEN_PREFIX,
    hash_token,
    new_token,
)
from parallel_pilot.core.protocol import (
    JoinTokenCreate,
    JoinTokenCreated,
    JoinTokenInfo,
    JoinTokenState,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    UserCreate,
    UserCreated,
    UserSummary,
)
from parallel_pilot.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import accounts as account_queries
from parallel_pilot.store.queries import sync as qs

log = logging.getLogger("pilot.accounts")

FIRST_TOKEN_NAME = "first token"  # name of the API token made with a new user


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise Forbidden("only an admin may do this")


# ------------------------------------------------------------ users


def create_user(svc: Services, caller: Caller, request: UserCreate) -> UserCreated:
    require_admin(caller)
    now = svc.clock()
    token = new_token(USER_TOKEN_PREFIX)
    # hashed before the transaction: argon2 is deliberately slow
    password_hash = hash_password(request.password) if request.password else None
    exists = Conflict(f"a user named {request.name!r} exists already")
    try:
        with svc.transaction() as conn:
            if q.user_by_name(conn, request.name) is not None:
                raise exists
            user_id = q.insert_user(conn, request.name, request.is_admin, now)
            if password_hash is not None:
                q.set_password_hash(conn, user_id, password_hash)
            q.insert_api_token(conn, user_id, hash_token(token), FIRST_TOKEN_NAME, now)
    except sa.exc.IntegrityError:  # created concurrently by another request
        raise exists from None
    log.info("%s created user %s%s", caller.name, request.name,
             " (admin)" if request.is_admin else "")
    return UserCreated(id=user_id, user=request.name, token=token)


def _user(conn: sa.Connection, name: str) -> sa.Row:
    row = q.user_by_name(conn, name)
    if row is None:
        raise NotFound(f"no user named {name!r}")
    return row


def set_password(svc: Services, caller: Caller, name: str, password: str) -> None:
    require_admin(caller)
    password_hash = hash_password(password)
    with svc.transaction() as conn:
        q.set_password_hash(conn, _user(conn, name).id, password_hash)


def list_users(svc: Services, caller: Caller) -> list[UserSummary]:
    require_admin(caller)
    with svc.transaction() as conn:
        rows = q.list_users(conn)
    return [UserSummary(id=r.id, name=r.name, is_admin=bool(r.is_admin),
                        disabled=bool(r.disabled), created_at=r.created_at) for r in rows]


def disable_user(svc: Services, caller: Caller, name: str) -> None:
    """Disable an account; every token of it stops working at once."""
    require_admin(caller)
    with svc.transaction() as conn:
        user = _user(conn, name)
        if user.id == caller.user_id:
            raise Conflict("you cannot disable your own account")
        q.disable_user(conn, user.id)
    svc.user_cache.clear()  # its tokens stop working at once
    log.info("%s disabled user %s", caller.name, name)


# ------------------------------------------------------------ API tokens (the caller's own)


def create_token(svc: Services, caller: Caller, request: TokenCreate) -> TokenCreated:
    if request.name.strip() == SESSION_TOKEN_NAME:  # that name marks a browser's sign-in
        raise InvalidInput(f"the token name {SESSION_TOKEN_NAME!r} is kept for browsers "
                           "signed in to the dashboard; choose another name")
    now = svc.clock()
    expires_at = now + request.expires_seconds if request.expires_seconds else None
    token = new_token(USER_TOKEN_PREFIX)
    with svc.transaction() as conn:
        token_id = q.insert_api_token(conn, caller.user_id, hash_token(token), request.name,
                                      now, expires_at)
    return TokenCreated(id=token_id, name=request.name, token=token, expires_at=expires_at)


def _token_infos(rows: list[sa.Row], now: float) -> list[TokenInfo]:
    return [TokenInfo(id=r.id, name=r.name, created_at=r.created_at, expires_at=r.expires_at,
                      expired=r.expires_at is not None and r.expires_at <= now) for r in rows]


def list_tokens(svc: Services, caller: Caller) -> list[TokenInfo]:
    """The caller's API tokens (for the CLI and SDK), not the browsers signed in."""
    now = svc.clock()
    with svc.transaction() as conn:
        rows = q.list_api_tokens(conn, caller.user_id, except_name=SESSION_TOKEN_NAME)
    return _token_infos(rows, now)


# ------------------------------------------------------------ signed-in browsers


def list_sessions(svc: Services, caller: Caller) -> list[TokenInfo]:
    """The browsers signed in as the caller (web sessions that have not ended), newest
    first; ``created_at`` is when each signed in."""
    now = svc.clock()
    with svc.transaction() as conn:
        rows = account_queries.live_api_tokens_named(conn, caller.user_id,
                                                     SESSION_TOKEN_NAME, now)
    return _token_infos(rows, now)


def session_id(svc: Services, session_token: str | None) -> int | None:
    """The id of the web session whose cookie holds ``session_token`` (this browser's)."""
    if not session_token:
        return None
    with svc.transaction() as conn:
        return account_queries.api_token_id_by_hash(conn, hash_token(session_token))


def end_session(svc: Services, caller: Caller, session: int) -> None:
    """Sign out one of the caller's browsers: its session cookie stops working at once."""
    with svc.transaction() as conn:
        if not q.revoke_api_token(conn, session, caller.user_id, svc.clock(),
                                  name=SESSION_TOKEN_NAME):
            raise NotFound(f"you have no signed-in browser {session}")
    svc.user_cache.clear()  # the cookie stops working at once
    log.info("%s signed out web session %d", caller.name, session)


def revoke_token(svc: Services, caller: Caller, token_id: int) -> None:
    with svc.transaction() as conn:
        # another user's token id answers the same as a missing one: don't confirm it exists
        if not q.revoke_api_token(conn, token_id, caller.user_id, svc.clock()):
            raise NotFound(f"you have no active token {token_id}")
    svc.user_cache.clear()  # the token stops working at once


# ------------------------------------------------------------ join tokens


def create_join_token(svc: Services, caller: Caller,
                      request: JoinTokenCreate) -> JoinTokenCreated:
    require_admin(caller)
    now = svc.clock()
    expires_at = now + request.expires_seconds if request.expires_seconds else None
    token = new_token(JOIN_TOKEN_PREFIX)
    with svc.transaction() as conn:
        token_id = q.insert_join_token(conn, hash_token(token), request.name, now,
                                       uses_left=request.uses, expires_at=expires_at,
                                       approval_required=request.approval_required,
                                       max_slots=request.max_slots)
    return JoinTokenCreated(id=token_id, name=request.name, token=token,
                            uses_left=request.uses, expires_at=expires_at,
                            approval_required=request.approval_required,
                            max_slots=request.max_slots)


def _join_state(row: sa.Row, now: float) -> JoinTokenState:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    if row.uses_left is not None and row.uses_left <= 0:
        return "used_up"
    return "active"


def list_join_tokens(svc: Services, caller: Caller) -> list[JoinTokenInfo]:
    require_admin(caller)
    now = svc.clock()
    with svc.transaction() as conn:
        rows = q.list_join_tokens(conn)
    return [JoinTokenInfo(id=r.id, name=r.name, created_at=r.created_at,
                          expires_at=r.expires_at, uses_left=r.uses_left,
                          state=_join_state(r, now),
                          approval_required=bool(r.approval_required),
                          max_slots=r.max_slots) for r in rows]


def revoke_join_token(svc: Services, caller: Caller, token_id: int) -> None:
    require_admin(caller)
    with svc.transaction() as conn:
        if not q.revoke_join_token(conn, token_id, svc.clock()):
            raise NotFound(f"no active join token {token_id}")


def use_join_token(conn: sa.Connection, token: str, now: float) -> sa.Row:
    """Count one use of a join token inside the register transaction, or refuse it;
    returns its row (id, approval_required, max_slots)."""
    row = q.join_token_by_hash(conn, hash_token(token))
    if row is None:
        raise Unauthorized("the join token is not valid (ask the coordinator's admin for "
                           "one: pilot join-tokens create, or DATA_DIR/join-token)")
    state = _join_state(row, now)
    if state != "active" or not q.use_join_token(conn, row.id, now):
        why = {"revoked": "was revoked", "expired": "has expired",
               "used_up": "has been used as often as it allowed"}.get(state, "is used up")
        raise Unauthorized(f"the join token {why}; ask the coordinator's admin for a new one")
    return row


# ------------------------------------------------------------ workers


def revoke_worker(svc: Services, caller: Caller, worker_id: int) -> int:
    """Refuse the worker's token from now on and requeue what it held; returns how many
    tasks went back to the queue (a loss each, no failure: ``services.losses``)."""
    require_admin(caller)
    now = svc.clock()
    with svc.transaction() as conn:
        worker = q.get_worker(conn, worker_id)
        if worker is None:
            raise NotFound(f"no worker {worker_id}")
        if not q.revoke_worker(conn, worker_id, now):
            raise Conflict(f"worker {worker_id} is revoked already")
        held = qs.held_attempts(conn, worker_id, lock=conn.dialect.name != "sqlite")
        stragglers.drop_worker(conn, worker_id, f"worker {worker.name} was revoked", now)
        requeued = sum(losses.lose(conn, svc, held, [
            f"worker {worker.name} was revoked; task requeued (no attempt used)"] * len(held),
            now).values())
    svc.worker_cache.forget(worker_id)  # its token stops working now in this process
    log.info("%s revoked worker %s (%d); %d task(s) requeued", caller.name, worker.name,
             worker_id, requeued)
    if requeued:
        svc.notifier.notify()
    return requeued
