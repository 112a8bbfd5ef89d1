"""Dashboard pages for people: log in and out (the web session of ``coordinator.sessions``)
and the account page: one's own API tokens (create, revoke), the browsers signed in as
one (sign out each) and, for admins, users and worker join tokens. Everything goes
through ``services.accounts``, as the API does."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from parallel_pilot.coordinator import sessions
from parallel_pilot.coordinator.services import accounts
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.core.protocol import JoinTokenCreate, TokenCreate, UserCreate
from parallel_pilot.errors import PilotError, RateLimited, Unauthorized
from parallel_pilot.kinds.base import describe_validation
from parallel_pilot.web.templating import page
from parallel_pilot.web.viewer import PageRoute, form_user, require_viewer, safe_next, services
from parallel_pilot.web.viewer import viewer as find_viewer

router = APIRouter(route_class=PageRoute, include_in_schema=False)

Viewer = Annotated[Caller, Depends(require_viewer)]
FormUser = Annotated[Caller, Depends(form_user)]
ServicesDep = Annotated[Services, Depends(services)]
RowId = Annotated[int, Path(ge=1, le=2**62)]
DAY = 86400  # seconds in a day: token expiries are asked for in days


def _cookie_lost(svc: Services, request: Request) -> bool:
    """Whether a browser would drop the session cookie: it is marked Secure but this page
    came over plain http (a remote address without TLS)."""
    return request.url.scheme == "http" and sessions.cookie_secure(svc, request)


@router.get("/login")
async def login_page(request: Request, svc: ServicesDep, next: str = "/jobs") -> Response:
    user = await find_viewer(request)
    if user is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return page(request, "login.html", {"next": safe_next(next), "name": "", "error": "",
                                        "cookie_lost": _cookie_lost(svc, request)},
                viewer=None)


@router.post("/login")
def login(request: Request, svc: ServicesDep, name: Annotated[str, Form(max_length=100)] = "",
          password: Annotated[str, Form(max_length=1024)] = "",
          next: Annotated[str, Form(max_length=2000)] = "/jobs") -> Response:
    """Log in with the form: the same session cookie and CSRF cookie as POST /session."""
    ip = request.client.host if request.client else "unknown"
    try:
        if not name or not password:
            raise Unauthorized("enter your user name and password")
        done = sessions.login(svc, sessions.limiter(request, svc), ip, name, password)
    except (Unauthorized, RateLimited) as exc:
        status = 429 if isinstance(exc, RateLimited) else 401
        return page(request, "login.html", {"next": safe_next(next), "name": name,
                                            "error": exc.message,
                                            "cookie_lost": _cookie_lost(svc, request)},
                    viewer=None, status_code=status)
    response = RedirectResponse(safe_next(next), status_code=303)
    sessions.set_cookies(svc, request, response, done)
    return response


@router.post("/logout")
def logout(request: Request, svc: ServicesDep, user: FormUser) -> Response:
    sessions.logout(svc, request.cookies.get(sessions.SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    sessions.clear_cookies(svc, request, response)
    return response


def _account(request: Request, svc: Services, user: Caller, *, status_code: int = 200,
             **extra: Any) -> Response:
    context: dict[str, Any] = {
        "tokens": accounts.list_tokens(svc, user), "sessions": accounts.list_sessions(svc, user),
        "this_session": accounts.session_id(svc, request.cookies.get(sessions.SESSION_COOKIE)),
        "users": [], "join_tokens": [], "created": None, "error": "", "error_form": "",
        "now": svc.clock()}
    if user.is_admin:
        context["users"] = accounts.list_users(svc, user)
        context["join_tokens"] = accounts.list_join_tokens(svc, user)
    context.update(extra)
    return page(request, "account.html", context, viewer=user, status_code=status_code)


@router.get("/account")
def account_page(request: Request, svc: ServicesDep, user: Viewer) -> Response:
    return _account(request, svc, user)


def _days(raw: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError("expiry must be a whole number of days, 1 or more")
    return int(raw) * DAY


def _refused(request: Request, svc: Services, user: Caller, which: str,
             message: str) -> Response:
    return _account(request, svc, user, status_code=400, error=message, error_form=which)


@router.post("/account/tokens")
def create_token(request: Request, svc: ServicesDep, user: FormUser,
                 name: Annotated[str, Form(max_length=100)] = "",
                 expires_days: Annotated[str, Form(max_length=10)] = "") -> Response:
    """A new API token, shown on the page that answers (once: only a hash is kept)."""
    try:
        body = TokenCreate(name=name, expires_seconds=_days(expires_days))
    except (ValueError, ValidationError) as exc:
        return _refused(request, svc, user, "token", _message(exc))
    created = accounts.create_token(svc, user, body)
    return _account(request, svc, user, created={"what": "API token", "token": created.token,
                                                 "name": created.name})


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(svc: ServicesDep, user: FormUser, token_id: RowId) -> Response:
    accounts.revoke_token(svc, user, token_id)
    return RedirectResponse("/account", status_code=303)


@router.post("/account/sessions/{session_id}/sign-out")
def sign_out(request: Request, svc: ServicesDep, user: FormUser, session_id: RowId) -> Response:
    """Sign out one browser; signing out this one is logging out."""
    this = accounts.session_id(svc, request.cookies.get(sessions.SESSION_COOKIE))
    accounts.end_session(svc, user, session_id)
    if session_id != this:
        return RedirectResponse("/account", status_code=303)
    response = RedirectResponse("/login", status_code=303)
    sessions.clear_cookies(svc, request, response)
    return response


@router.post("/account/users")
def create_user(request: Request, svc: ServicesDep, user: FormUser,
                name: Annotated[str, Form(max_length=100)] = "",
                password: Annotated[str, Form(max_length=1024)] = "",
                is_admin: Annotated[bool, Form()] = False) -> Response:
    try:
        body = UserCreate(name=name, password=password or None, is_admin=is_admin)
        created = accounts.create_user(svc, user, body)
    except ValidationError as exc:
        return _refused(request, svc, user, "user", _message(exc))
    except PilotError as exc:
        if exc.status != 409:
            raise
        return _refused(request, svc, user, "user", exc.message)
    return _account(request, svc, user, created={"what": f"first API token of {created.user}",
                                                 "token": created.token, "name": created.user})


@router.post("/account/join-tokens")
def create_join_token(request: Request, svc: ServicesDep, user: FormUser,
                      name: Annotated[str, Form(max_length=100)] = "",
                      uses: Annotated[str, Form(max_length=10)] = "",
                      expires_days: Annotated[str, Form(max_length=10)] = "") -> Response:
    try:
        body = JoinTokenCreate(name=name, uses=int(uses) if uses.strip() else None,
                               expires_seconds=_days(expires_days))
    except (ValueError, ValidationError) as exc:
        return _refused(request, svc, user, "join", _message(exc))
    created = accounts.create_join_token(svc, user, body)
    return _account(request, svc, user, created={"what": "worker join token",
                                                 "token": created.token, "name": created.name})


@router.post("/account/join-tokens/{token_id}/revoke")
def revoke_join_token(svc: ServicesDep, user: FormUser, token_id: RowId) -> Response:
    accounts.revoke_join_token(svc, user, token_id)
    return RedirectResponse("/account", status_code=303)


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe_validation(exc)
    if str(exc).startswith("invalid literal for int()"):
        return "uses must be a whole number"
    return str(exc)
