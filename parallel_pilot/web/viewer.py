"""Who is looking at a page: the web session cookie resolved to a user (the same token rows
``coordinator.auth`` uses), CSRF checks for forms, and ``PageRoute``, which answers a
``PilotError`` raised by a page with an HTML page (or a redirect to log in) instead of the
API's JSON body."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse

from parallel_pilot.coordinator import sessions
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.strict_route import StrictRefusal, StrictRoute, authenticate_first
from parallel_pilot.coordinator.tokens import WORKER_TOKEN_PREFIX, hash_token
from parallel_pilot.errors import InvalidInput, NotFound, PilotError, Unauthorized, http_status
from parallel_pilot.store import queries as q
from parallel_pilot.web.templating import page

LOGIN_PATH = "/login"


def services(request: Request) -> Services:
    return request.app.state.services


def _lookup(svc: Services, token: str) -> Caller | None:
    with svc.transaction() as conn:
        row = q.user_by_token_hash(conn, hash_token(token), svc.clock())
    return Caller(row.id, row.name, bool(row.is_admin)) if row else None


async def viewer(request: Request) -> Caller | None:
    """The logged-in user of the session cookie, or None."""
    token = request.cookies.get(sessions.SESSION_COOKIE)
    if not token or token.startswith(WORKER_TOKEN_PREFIX):
        return None
    return await run_in_threadpool(_lookup, services(request), token)


async def require_viewer(request: Request) -> Caller:
    """The logged-in user; a page without one sends the browser to the login page."""
    found = await viewer(request)
    if found is None:
        raise Unauthorized("log in to see this page")
    return found


async def form_user(request: Request) -> Caller:
    """The user of a form post: logged in, and the form carries the CSRF token."""
    user = await require_viewer(request)
    await sessions.check_csrf(request)
    return user


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (no //host, no scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/jobs"
    return target


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN_PATH}?next={quote(target, safe='')}", status_code=303)


# a form post's session is checked before its body is read (the CSRF check reads it)
authenticate_first(require_viewer, require_viewer)
authenticate_first(form_user, require_viewer)


class PageRoute(StrictRoute):
    """A dashboard route: errors become pages people can read, and a missing or ended
    session becomes a redirect to the login page (streams and files answer 401). Its
    input is checked as the API's is (``StrictRoute``): a refused field is a 422 page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except StrictRefusal as exc:
                return await _error_page(request, InvalidInput(exc.message), status=422)
            except RequestValidationError:
                return await _error_page(request, NotFound("no such page"))
            except Unauthorized as exc:
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return login_redirect(request)
                return await _error_page(request, exc)
            except PilotError as exc:
                return await _error_page(request, exc)

        return run


async def _error_page(request: Request, exc: PilotError, status: int | None = None) -> Response:
    status = status or http_status(exc)
    titles = {400: "That did not work", 401: "Please log in", 403: "Not allowed",
              404: "Not found", 408: "Too slow", 409: "Conflict", 413: "Too large",
              422: "That did not work", 429: "Slow down"}
    return page(request, "error.html", {"title": titles.get(status, "Error"),
                                        "message": exc.message, "status": status},
                viewer=await viewer(request), status_code=status)
