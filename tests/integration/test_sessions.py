"""Web sessions through the real API: login cookies (HttpOnly, SameSite, Secure), CSRF on
state-changing requests made with the cookie, logout, rate-limited failed logins."""

from __future__ import annotations

from typing import Any

import pytest

from parallel_pilot.coordinator.sessions import CSRF_COOKIE, SESSION_COOKIE
from tests.integration.conftest import Coordinator

API = "/api/v1"
JOB = {"kind": "sleep", "params": {"tasks": 1, "milliseconds": 0}}
PASSWORD = "correct horse battery"


@pytest.fixture
def coord(sqlite_coordinator: Coordinator) -> Coordinator:
    # https, so the Secure cookies are set (auto rule) and sent back by the test client
    sqlite_coordinator.client.base_url = "https://testserver"  # type: ignore[assignment]
    r = sqlite_coordinator.client.post(f"{API}/users", headers=sqlite_coordinator.user(),
                                       json={"name": "alice", "password": PASSWORD})
    assert r.status_code == 200, r.text
    return sqlite_coordinator


def login(coord: Coordinator, password: str = PASSWORD, name: str = "alice") -> Any:
    return coord.client.post(f"{API}/session", json={"name": name, "password": password})


def set_cookie_headers(response: Any) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


def test_login_sets_httponly_samesite_secure_cookies(coord: Coordinator) -> None:
    r = login(coord)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == "alice" and body["is_admin"] is False
    cookies = set_cookie_headers(r)
    session, csrf = cookies[SESSION_COOKIE].lower(), cookies[CSRF_COOKIE].lower()
    for header in (session, csrf):
        assert "samesite=strict" in header and "secure" in header and "path=/" in header
    assert "httponly" in session and "httponly" not in csrf
    assert coord.client.cookies[CSRF_COOKIE] == body["csrf_token"]
    assert coord.client.get(f"{API}/session").json() == {"user": "alice", "is_admin": False}


def test_plain_http_to_localhost_is_not_secure(coord: Coordinator) -> None:
    r = coord.client.post(f"http://127.0.0.1{API}/session",
                          json={"name": "alice", "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert "secure" not in set_cookie_headers(r)[SESSION_COOKIE].lower()


def test_cookie_works_and_state_changes_need_csrf(coord: Coordinator) -> None:
    csrf = login(coord).json()["csrf_token"]
    assert coord.client.get(f"{API}/jobs").status_code == 200
    r = coord.client.post(f"{API}/jobs", json=JOB)
    assert r.status_code == 403
    assert r.json() == {"error": "forbidden", "message": "missing or wrong CSRF token"}
    r = coord.client.post(f"{API}/jobs", json=JOB, headers={"X-CSRF-Token": "wrong"})
    assert r.status_code == 403
    r = coord.client.post(f"{API}/jobs", json=JOB, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    # a bearer token needs no CSRF token (a browser cannot be made to send it)
    r = coord.client.post(f"{API}/jobs", json=JOB, headers=coord.user())
    assert r.status_code == 201, r.text


def test_logout_ends_the_session(coord: Coordinator) -> None:
    csrf = login(coord).json()["csrf_token"]
    session = coord.client.cookies[SESSION_COOKIE]
    assert coord.client.delete(f"{API}/session").status_code == 403  # needs CSRF
    r = coord.client.delete(f"{API}/session", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert SESSION_COOKIE not in coord.client.cookies
    coord.client.cookies.set(SESSION_COOKIE, session)  # replayed: the token is revoked
    assert coord.client.get(f"{API}/jobs").status_code == 401
    assert coord.client.get(f"{API}/jobs", headers={"Authorization": f"Bearer {session}"}
                            ).status_code == 401


def test_session_expires(coord: Coordinator) -> None:
    login(coord)
    coord.clock.advance(coord.services.settings.session_seconds + 1)
    assert coord.client.get(f"{API}/jobs").status_code == 401


def test_failed_logins_are_rate_limited(coord: Coordinator) -> None:
    wrong_password = login(coord, "not the password")
    no_such_user = login(coord, PASSWORD, name="mallory")
    assert wrong_password.status_code == no_such_user.status_code == 401
    assert wrong_password.json() == no_such_user.json()  # no user enumeration
    for _ in range(4):
        assert login(coord, "not the password").status_code == 401
    r = login(coord)  # the 6th attempt, right password, still refused
    assert r.status_code == 429
    assert r.json()["error"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 300
    assert login(coord, name="admin", password="whatever-else").status_code == 401  # other key
    coord.clock.advance(301)
    assert login(coord).status_code == 200


def test_disabled_user_cannot_log_in(coord: Coordinator) -> None:
    r = coord.client.post(f"{API}/users/alice/disable", headers=coord.user())
    assert r.status_code == 200, r.text
    r = login(coord)
    assert r.status_code == 401 and SESSION_COOKIE not in coord.client.cookies


def test_worker_endpoints_ignore_the_session_cookie(coord: Coordinator) -> None:
    csrf = login(coord).json()["csrf_token"]
    r = coord.client.post(f"{API}/workers/lease", json={"slots": 1, "wait_seconds": 0},
                          headers={"X-CSRF-Token": csrf})
    assert r.status_code == 401
