"""Who is calling: bearer tokens resolved to a user or a worker, as FastAPI dependencies.
Users may also use the web session cookie (with CSRF checks); workers are bearer-only."""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator import sessions
from parallel_pilot.coordinator.log_context import annotate
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.strict_route import authenticate_first
from parallel_pilot.coordinator.tokens import WORKER_TOKEN_PREFIX, hash_token
from parallel_pilot.errors import Forbidden, Unauthorized
from parallel_pilot.store import queries as q

_bearer = HTTPBearer(auto_error=False, description="a user API token or a worker token")


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("send a token: Authorization: Bearer <token>")
    return credentials.credentials


def _user(svc: Services, token: str) -> Caller | None:
    """The user of a token, from ``svc.user_cache`` for a few seconds after it was read;
    an unknown, revoked or expired token is looked up each time."""
    token_hash, now = hash_token(token), svc.clock()
    user = svc.user_cache.get(token_hash, now)
    if user is None:
        with svc.transaction() as conn:
            row = q.user_by_token_hash(conn, token_hash, now)
        if row is None:
            return None
        user = (int(row.id), str(row.name), bool(row.is_admin))
        svc.user_cache.put(token_hash, user,
                           None if row.expires_at is None else float(row.expires_at))
    annotate(user=user[1])
    return Caller(*user)


def _worker(svc: Services, token: str) -> sa.Row | None:
    """The worker row of a token, from ``svc.worker_cache`` for a few seconds after it was
    read (a worker's every request would otherwise be a query); a revoked or unknown token
    is looked up each time."""
    token_hash = hash_token(token)
    row = svc.worker_cache.get(token_hash)
    if row is None:
        with svc.transaction() as conn:
            row = q.worker_by_token_hash(conn, token_hash)
        if row is not None:
            svc.worker_cache.put(token_hash, row)
    if row is not None:
        annotate(worker_id=row.id)
    return row


def _bearer_user(svc: Services, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    token = _token(credentials)
    if token.startswith(WORKER_TOKEN_PREFIX):
        raise Forbidden("this endpoint is for users; a worker token was sent")
    user = _user(svc, token)
    if user is None:
        raise Unauthorized("the token is not valid (revoked, expired or mistyped)")
    return user


async def current_user(request: Request, svc: ServicesDep, credentials: Credentials,
                       ) -> Caller:
    """The user of a bearer token, or else of the web session cookie (then state-changing
    requests must carry the CSRF token)."""
    cookie = request.cookies.get(sessions.SESSION_COOKIE)
    if (credentials is not None and credentials.credentials) or not cookie:
        return await run_in_threadpool(_bearer_user, svc, credentials)
    user = None
    if not cookie.startswith(WORKER_TOKEN_PREFIX):
        user = await run_in_threadpool(_user, svc, cookie)
    if user is None:
        raise Unauthorized("the session has ended (logged out or expired); log in again")
    await sessions.check_csrf(request)
    return user


def current_worker(svc: ServicesDep, credentials: Credentials) -> sa.Row:
    token = _token(credentials)
    worker = _worker(svc, token) if token.startswith(WORKER_TOKEN_PREFIX) else None
    if worker is None:
        if _user(svc, token) is not None:
            raise Forbidden("this endpoint is for workers; a user token was sent")
        raise Unauthorized("the worker token is not valid (revoked or mistyped)")
    return worker


async def user_or_worker(request: Request, svc: ServicesDep, credentials: Credentials,
                         ) -> Caller | sa.Row:
    """A worker or user token; without one, the user of the web session cookie (so the
    dashboard can show and download blobs; the same read checks apply)."""
    if not (credentials is not None and credentials.credentials) and \
            request.cookies.get(sessions.SESSION_COOKIE):
        return await current_user(request, svc, credentials)
    return await run_in_threadpool(_user_or_worker, svc, credentials)


def _user_or_worker(svc: Services, credentials: HTTPAuthorizationCredentials | None,
                    ) -> Caller | sa.Row:
    token = _token(credentials)
    found = _worker(svc, token) if token.startswith(WORKER_TOKEN_PREFIX) else _user(svc, token)
    if found is None:
        raise Unauthorized("the token is not valid (revoked, expired or mistyped)")
    return found


CurrentUser = Annotated[Caller, Depends(current_user)]
CurrentWorker = Annotated[sa.Row, Depends(current_worker)]
UserOrWorker = Annotated[Caller | sa.Row, Depends(user_or_worker)]


# the same checks, run by ``strict_route`` before a request's body is read: a stranger's
# (or a revoked worker's) body is refused unread
async def _user_first(request: Request) -> None:
    await current_user(request, get_services(request), await _bearer(request))


async def _worker_first(request: Request) -> None:
    await run_in_threadpool(current_worker, get_services(request), await _bearer(request))


async def _user_or_worker_first(request: Request) -> None:
    await user_or_worker(request, get_services(request), await _bearer(request))


authenticate_first(current_user, _user_first)
authenticate_first(current_worker, _worker_first)
authenticate_first(user_or_worker, _user_or_worker_first)
