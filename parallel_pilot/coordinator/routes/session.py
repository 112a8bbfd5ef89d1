"""Web session endpoints: log in (cookie + CSRF token), who is logged in, log out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from parallel_pilot.coordinator import sessions
from parallel_pilot.coordinator.auth import CurrentUser, ServicesDep
from parallel_pilot.coordinator.strict_route import StrictRoute
from parallel_pilot.core.protocol import Ack, ErrorBody, SessionCreated, SessionInfo, SessionLogin

router = APIRouter(tags=["session"], route_class=StrictRoute)

RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "description": "rate limited (see Retry-After)"}}


@router.post("/session", response_model=SessionCreated, responses=RATE_LIMITED)
def login(svc: ServicesDep, request: Request, response: Response,
          body: SessionLogin) -> SessionCreated:
    """Log in with a password: sets the HttpOnly session cookie and the CSRF cookie; send
    the CSRF token back as X-CSRF-Token on every state-changing request."""
    ip = request.client.host if request.client else "unknown"
    done = sessions.login(svc, sessions.limiter(request, svc), ip, body.name, body.password)
    sessions.set_cookies(svc, request, response, done)
    return SessionCreated(user=done.caller.name, is_admin=done.caller.is_admin,
                          csrf_token=done.csrf)


@router.get("/session", response_model=SessionInfo)
def who(user: CurrentUser) -> SessionInfo:
    return SessionInfo(user=user.name, is_admin=user.is_admin)


@router.delete("/session", response_model=Ack)
def logout(svc: ServicesDep, request: Request, response: Response, user: CurrentUser) -> Ack:
    """Log out: the session token is revoked and both cookies cleared."""
    sessions.logout(svc, request.cookies.get(sessions.SESSION_COOKIE))
    sessions.clear_cookies(svc, request, response)
    return Ack()
