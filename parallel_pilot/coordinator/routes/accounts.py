"""Account endpoints: users (admin), the caller's own API tokens, the browsers signed in as
the caller (web sessions, listed apart from the tokens), join tokens (admin) and revoking
a worker (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from parallel_pilot.coordinator.auth import CurrentUser, ServicesDep
from parallel_pilot.coordinator.services import accounts
from parallel_pilot.coordinator.strict_route import StrictRoute
from parallel_pilot.core.protocol import (
    USER_NAME_PATTERN,
    Ack,
    JoinTokenCreate,
    JoinTokenCreated,
    JoinTokenList,
    PasswordSet,
    TokenCreate,
    TokenCreated,
    TokenList,
    UserCreate,
    UserCreated,
    UserList,
)

router = APIRouter(tags=["accounts"], route_class=StrictRoute)

UserName = Annotated[str, Path(pattern=USER_NAME_PATTERN)]
RowId = Annotated[int, Path(ge=1, le=2**62)]


@router.post("/users", response_model=UserCreated)
def create_user(svc: ServicesDep, user: CurrentUser, body: UserCreate) -> UserCreated:
    """Create a user (admin); the answer holds the user's first API token, shown once."""
    return accounts.create_user(svc, user, body)


@router.get("/users", response_model=UserList)
def list_users(svc: ServicesDep, user: CurrentUser) -> UserList:
    return UserList(users=accounts.list_users(svc, user))


@router.put("/users/{name}/password", response_model=Ack)
def set_password(svc: ServicesDep, user: CurrentUser, name: UserName, body: PasswordSet) -> Ack:
    accounts.set_password(svc, user, name, body.password)
    return Ack()


@router.post("/users/{name}/disable", response_model=Ack)
def disable_user(svc: ServicesDep, user: CurrentUser, name: UserName) -> Ack:
    """Disable a user (admin); every token of theirs is refused from now on."""
    accounts.disable_user(svc, user, name)
    return Ack()


@router.post("/tokens", response_model=TokenCreated)
def create_token(svc: ServicesDep, user: CurrentUser, body: TokenCreate) -> TokenCreated:
    """A new API token for the caller, shown once."""
    return accounts.create_token(svc, user, body)


@router.get("/tokens", response_model=TokenList)
def list_tokens(svc: ServicesDep, user: CurrentUser) -> TokenList:
    """The caller's own API tokens that are not revoked (never the tokens themselves);
    the browsers signed in are listed by ``GET /sessions``."""
    return TokenList(tokens=accounts.list_tokens(svc, user))


@router.delete("/tokens/{token_id}", response_model=Ack)
def revoke_token(svc: ServicesDep, user: CurrentUser, token_id: RowId) -> Ack:
    accounts.revoke_token(svc, user, token_id)
    return Ack()


@router.get("/sessions", response_model=TokenList)
def list_sessions(svc: ServicesDep, user: CurrentUser) -> TokenList:
    """The browsers signed in to the dashboard as the caller (web sessions that have not
    ended), newest first; ``created_at`` is when each signed in."""
    return TokenList(tokens=accounts.list_sessions(svc, user))


@router.delete("/sessions/{session_id}", response_model=Ack)
def end_session(svc: ServicesDep, user: CurrentUser, session_id: RowId) -> Ack:
    """Sign out one browser: its session ends at once (``DELETE /session`` ends one's own)."""
    accounts.end_session(svc, user, session_id)
    return Ack()


@router.post("/join-tokens", response_model=JoinTokenCreated)
def create_join_token(svc: ServicesDep, user: CurrentUser,
                      body: JoinTokenCreate) -> JoinTokenCreated:
    """A token workers join with (admin), shown once."""
    return accounts.create_join_token(svc, user, body)


@router.get("/join-tokens", response_model=JoinTokenList)
def list_join_tokens(svc: ServicesDep, user: CurrentUser) -> JoinTokenList:
    return JoinTokenList(join_tokens=accounts.list_join_tokens(svc, user))


@router.delete("/join-tokens/{token_id}", response_model=Ack)
def revoke_join_token(svc: ServicesDep, user: CurrentUser, token_id: RowId) -> Ack:
    accounts.revoke_join_token(svc, user, token_id)
    return Ack()


@router.post("/workers/{worker_id}/revoke", response_model=Ack)
def revoke_worker(svc: ServicesDep, user: CurrentUser, worker_id: RowId) -> Ack:
    """Revoke a worker (admin): its token is refused and its leased tasks are requeued."""
    accounts.revoke_worker(svc, user, worker_id)
    return Ack()
