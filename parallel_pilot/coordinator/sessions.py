"""Web sessions for the dashboard: login with a password gives a session cookie (an API
token row named "web session" that expires), a double-submit CSRF cookie, and failed
logins are rate-limited per (client IP, user name)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
from dataclasses import dataclass

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from parallel_pilot.coordinator.passwords import hash_password, verify_password
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.tokens import USER_TOKEN_PREFIX, hash_token, new_token
from parallel_pilot.errors import Forbidden, RateLimited, Unauthorized
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import logins as ql

log = logging.getLogger("pilot.sessions")

SESSION_COOKIE = "pilot_session"  # HttpOnly: the session's API token
CSRF_COOKIE = "pilot_csrf"  # readable by the page: sent back as the CSRF header
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"  # for HTML forms, which cannot set headers
SESSION_TOKEN_NAME = "web session"  # name of the API token row a login creates
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
BAD_LOGIN = "wrong user name or password"  # one message for both: no user enumeration
INSERT_RACE_TRIES = 3  # times a login retries when another made its pair's row first

_dummy_hash: str | None = None  # verified against for unknown users, to even out timing


def _verify(password_hash: str | None, password: str) -> bool:
    global _dummy_hash
    if password_hash:
        return verify_password(password_hash, password)
    if _dummy_hash is None:
        _dummy_hash = hash_password(secrets.token_urlsafe(16))
    verify_password(_dummy_hash, password)
    return False


class LoginLimiter:
    """Password logins tried per (client address, user name) and window, counted in the
    database: a try is taken (one conditional UPDATE) before the password is checked, so
    N concurrent wrong passwords get at most ``max_failures`` checks and the rest 429;
    every coordinator on the database shares the count, and a restart keeps it. A right
    password clears the count."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._swept_at = -math.inf
        self._lock = threading.Lock()

    @property
    def max_failures(self) -> int:
        return self.svc.settings.login_max_failures

    @property
    def window_seconds(self) -> float:
        return self.svc.settings.login_window_seconds

    def take(self, ip: str, name: str) -> None:
        """Take one try for the pair, or raise RateLimited while it has none left."""
        key = login_key(ip, name)
        now = self.svc.clock()
        self._sweep(now)
        for _ in range(INSERT_RACE_TRIES):
            with self.svc.transaction() as conn:
                if ql.take_login_try(conn, key, now, self.window_seconds, self.max_failures):
                    return
                started = ql.login_window_start(conn, key)
            if started is not None:
                wait = max(1, math.ceil(started + self.window_seconds - now))
                raise RateLimited(f"too many failed logins; try again in {wait} s",
                                  retry_after=wait)
            try:
                with self.svc.transaction() as conn:
                    ql.insert_login_try(conn, key, now)
                return
            except sa.exc.IntegrityError:
                continue  # another request made the row first: take from it
        raise RateLimited("too many logins at once; try again in 1 s", retry_after=1)

    def succeeded(self, ip: str, name: str) -> None:
        with self.svc.transaction() as conn:
            ql.clear_login_tries(conn, login_key(ip, name))

    def _sweep(self, now: float) -> None:
        """Forget windows long over, at most once per window per process."""
        with self._lock:
            if now - self._swept_at < self.window_seconds:
                return
            self._swept_at = now
        with self.svc.transaction() as conn:
            ql.delete_old_login_tries(conn, now - self.window_seconds)


def login_key(ip: str, name: str) -> str:
    """The pair as a fixed-size key: any address and name fit the column."""
    return hashlib.sha256(f"{ip}\x00{name}".encode("utf-8", "surrogatepass")).hexdigest()


_limiter_lock = threading.Lock()


def limiter(request: Request, svc: Services) -> LoginLimiter:
    """The app's login limiter, made on first use."""
    state = request.app.state
    with _limiter_lock:
        found: LoginLimiter | None = getattr(state, "login_limiter", None)
        if found is None:
            found = LoginLimiter(svc)
            state.login_limiter = found
    return found


@dataclass
class Login:
    caller: Caller
    token: str  # goes into the session cookie
    csrf: str  # goes into the CSRF cookie and the reply
    expires_at: float


def login(svc: Services, limits: LoginLimiter, ip: str, name: str, password: str) -> Login:
    limits.take(ip, name)
    with svc.transaction() as conn:
        user = q.user_by_name(conn, name)
    ok = _verify(user.password_hash if user is not None else None, password)
    if user is None or not ok or user.disabled:
        log.warning("failed login for %r from %s", name, ip)
        raise Unauthorized(BAD_LOGIN)
    limits.succeeded(ip, name)
    now = svc.clock()
    expires_at = now + svc.settings.session_seconds
    token = new_token(USER_TOKEN_PREFIX)
    with svc.transaction() as conn:
        q.insert_api_token(conn, user.id, hash_token(token), SESSION_TOKEN_NAME, now,
                           expires_at)
    log.info("%s logged in from %s", name, ip)
    return Login(Caller(user.id, user.name, bool(user.is_admin)), token,
                 secrets.token_urlsafe(32), expires_at)


def logout(svc: Services, token: str | None) -> None:
    if token:
        with svc.transaction() as conn:
            q.revoke_api_token_by_hash(conn, hash_token(token), svc.clock())
        svc.user_cache.clear()  # the cookie stops working at once


def cookie_secure(svc: Services, request: Request) -> bool:
    if svc.settings.cookie_secure is not None:
        return svc.settings.cookie_secure
    return not (request.url.scheme == "http" and request.url.hostname in LOCAL_HOSTS)


def set_cookies(svc: Services, request: Request, response: Response, done: Login) -> None:
    secure = cookie_secure(svc, request)
    max_age = max(1, int(svc.settings.session_seconds))
    response.set_cookie(SESSION_COOKIE, done.token, max_age=max_age, path="/",
                        secure=secure, httponly=True, samesite="strict")
    response.set_cookie(CSRF_COOKIE, done.csrf, max_age=max_age, path="/",
                        secure=secure, httponly=False, samesite="strict")


def clear_cookies(svc: Services, request: Request, response: Response) -> None:
    secure = cookie_secure(svc, request)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=secure, httponly=True,
                           samesite="strict")
    response.delete_cookie(CSRF_COOKIE, path="/", secure=secure, samesite="strict")


async def check_csrf(request: Request) -> None:
    """A state-changing request authenticated by the session cookie must echo the CSRF
    cookie in the X-CSRF-Token header (or a csrf_token form field)."""
    if request.method in SAFE_METHODS:
        return
    expected = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER)
    content_type = request.headers.get("content-type", "")
    if sent is None and content_type.startswith(("application/x-www-form-urlencoded",
                                                  "multipart/form-data")):
        form = await request.form()  # cached by Starlette: the endpoint still reads it
        field_value = form.get(CSRF_FORM_FIELD)
        sent = field_value if isinstance(field_value, str) else None
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise Forbidden("missing or wrong CSRF token")
