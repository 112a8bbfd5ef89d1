"""What a new user meets on the dashboard, against the real app in-process (SQLite): the
icon browsers ask for, API tokens listed apart from the browsers signed in (each signed
out on its own), tasks numbered 1..N in links and logs, no retry offered for a failure a
retry cannot fix, and a sweep whose items failed said to be so."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from parallel_pilot.client.cli import cli
from parallel_pilot.client.cli import common as cli_common
from parallel_pilot.client.sdk import Client
from parallel_pilot.coordinator.sessions import SESSION_COOKIE
from parallel_pilot.core.settings import ClientSettings
from tests.integration import trusted
from tests.integration.conftest import Coordinator, make_coordinator
from tests.integration.test_web_pages import _password, login

API = "/api/v1"


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coord = make_coordinator(f"sqlite:///{tmp_path / 'pilot.db'}", tmp_path,
                             cookie_secure=False)
    with coord.client:
        coord.client.headers["accept"] = "text/html"
        yield coord
    coord.services.engine.dispose()


def browser(coord: Coordinator) -> TestClient:
    """Another browser: the same app, a cookie jar of its own."""
    client = TestClient(coord.client.app)
    client.headers["accept"] = "text/html"
    return client


def test_the_icon_is_served_and_linked(coordinator: Coordinator) -> None:
    web = coordinator.client
    icon = web.get("/favicon.ico")  # no login needed: browsers ask before anyone logs in
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\0\0\1\0" and b"\x89PNG" in icon.content
    svg = web.get("/static/favicon.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    page = web.get("/login").text
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
    assert '<link rel="icon" href="/favicon.ico"' in page


def test_api_tokens_and_signed_in_browsers_are_listed_apart(coordinator: Coordinator,
                                                            tmp_path: Path) -> None:
    password = _password(coordinator)
    first, second = browser(coordinator), browser(coordinator)
    csrf = login(first, "admin", password)
    login(second, "admin", password)
    admin = coordinator.user()
    made = coordinator.client.post(f"{API}/tokens", headers=admin, json={"name": "laptop"})
    tokens = coordinator.client.get(f"{API}/tokens", headers=admin).json()["tokens"]
    assert [t["name"] for t in tokens][-1] == "laptop"
    assert all(t["name"] != "web session" for t in tokens)
    sessions = coordinator.client.get(f"{API}/sessions", headers=admin).json()["tokens"]
    assert len(sessions) == 2 and sessions[0]["created_at"] >= sessions[1]["created_at"]
    # a token may not take the name that marks a browser's sign-in
    refused = coordinator.client.post(f"{API}/tokens", headers=admin,
                                      json={"name": "web session"})
    assert refused.status_code == 400 and "kept for browsers" in refused.json()["message"]

    # the account page: tokens in one table, browsers in another, this one marked
    page = first.get("/account").text
    api_table = page.split('id="api-tokens"', 1)[1].split("</table>", 1)[0]
    assert "laptop" in api_table and "web session" not in api_table
    browsers = page.split('id="sessions"', 1)[1].split("</table>", 1)[0]
    assert browsers.count('class="session-row"') == 2
    assert browsers.count("this browser</span>") == 1
    # sign the other browser out: its pages ask it to log in again, this one stays
    other = next(s["id"] for s in sessions
                 if f'/account/sessions/{s["id"]}/sign-out' in browsers
                 and s["id"] != _this_session(page))
    done = first.post(f"/account/sessions/{other}/sign-out", data={"csrf_token": csrf},
                      follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/account"
    assert second.get("/jobs", follow_redirects=False).status_code == 303
    assert first.get("/jobs").status_code == 200
    assert len(coordinator.client.get(f"{API}/sessions", headers=admin).json()["tokens"]) == 1
    # an API token's id is not a browser to sign out, and another user's session is unknown
    assert coordinator.client.delete(f"{API}/sessions/{made.json()['id']}",
                                     headers=admin).status_code == 404
    # signing out this browser is logging out
    mine = _this_session(page)
    out = first.post(f"/account/sessions/{mine}/sign-out", data={"csrf_token": csrf},
                     follow_redirects=False)
    assert out.headers["location"] == "/login" and SESSION_COOKIE not in first.cookies
    assert coordinator.client.get(f"{API}/sessions", headers=admin).json()["tokens"] == []


def _this_session(page: str) -> int:
    row = re.search(r'this browser</span></td>.*?/account/sessions/(\d+)/sign-out', page,
                    re.S)
    assert row is not None
    return int(row[1])


def test_the_cli_lists_tokens_and_browsers_apart(coordinator: Coordinator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(2):
        login(browser(coordinator), "admin", _password(coordinator))
    def make_client(server: str | None = None, token: str | None = None,
                    settings: ClientSettings | None = None) -> Client:
        return Client("http://testserver", coordinator.admin_token,
                      transport=coordinator.client._transport, retry_seconds=0)

    monkeypatch.setattr(cli_common, "make_client", make_client)
    runner = CliRunner()

    def pilot(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    listed = pilot("tokens", "list")
    assert "first start" in listed and "web session" not in listed
    assert "2 browsers signed in to the dashboard: pilot tokens sessions" in listed
    ids = [s["id"] for s in json.loads(pilot("tokens", "sessions", "--json"))["sessions"]]
    assert len(ids) == 2
    table = pilot("tokens", "sessions")
    assert "SIGNED IN" in table and str(ids[0]) in table
    assert f"browser session {ids[0]} signed out" in pilot("tokens", "sign-out", str(ids[0]))
    assert [s.id for s in make_client().sessions()] == [ids[1]]
    assert "1 browser signed in" in pilot("tokens", "list")


def test_tasks_are_numbered_and_a_final_failure_offers_no_retry(coordinator: Coordinator
                                                                ) -> None:
    web = coordinator.client
    login(web, "admin", _password(coordinator))
    admin = coordinator.user()
    job = web.post(f"{API}/jobs", headers=admin, json={
        "kind": "sweep", "params": {"command": ["echo", "{item}"], "items": "a,b,c"}}).json()
    # trusted: its "a retry cannot help" is final at once
    worker = trusted.register(coordinator, "box", kinds=["sweep"], trusted=True)
    leased = web.post(f"{API}/workers/lease", headers=worker,
                      json={"slots": 3, "wait_seconds": 0}).json()["tasks"]
    ids = {t["task_id"] for t in leased}
    number = {t["id"]: t["index"] + 1 for t in web.get(f"{API}/jobs/{job['id']}/tasks",
                                                       headers=admin).json()["tasks"]}
    workers_page = web.get("/workers").text
    for task_id in ids:  # the workers page links each task by its number in the job
        assert f"/jobs/{job['id']}?task={number[task_id]}\"" in workers_page
    by_number = sorted(leased, key=lambda t: number[t["task_id"]])
    second = by_number[1]
    web.post(f"{API}/attempts/{second['task_id']}/{second['attempt']}/heartbeat",
             headers=worker, json={"log_lines": ["working on b"]})
    page = web.get(f"/jobs/{job['id']}?task=2").text
    assert "Task 2: " in page and "working on b" in page
    assert f'href="/jobs/{job["id"]}?task=3"' in page
    for task in by_number:
        web.post(f"{API}/attempts/{task['task_id']}/{task['attempt']}/fail", headers=worker,
                 json={"reason": "the command template names a file that is not there",
                       "retryable": False})
    page = web.get(f"/jobs/{job['id']}").text
    assert "Retry failed tasks" not in page
    assert "the failure is not one a retry can fix" in page
    assert 'id="no-retry"' in page


def test_a_sweep_with_failed_items_says_so(coordinator: Coordinator) -> None:
    web = coordinator.client
    login(web, "admin", _password(coordinator))
    admin = coordinator.user()
    job = web.post(f"{API}/jobs", headers=admin, json={
        "kind": "sweep", "params": {"command": ["false"], "items": "1,2,3"}}).json()
    worker = coordinator.register_worker(kinds=["sweep"])
    leased = web.post(f"{API}/workers/lease", headers=worker,
                      json={"slots": 3, "wait_seconds": 0}).json()["tasks"]
    for task, code in zip(leased, (0, 1, 2), strict=True):
        web.post(f"{API}/attempts/{task['task_id']}/{task['attempt']}/complete",
                 headers=worker, json={"result": {"item": "x", "exit_code": code,
                                                  "files": {}}})
    assert web.get(f"{API}/jobs/{job['id']}", headers=admin).json()["failed_items"] == 2
    listed = web.get("/jobs").text
    row = listed.split(f'data-job="{job["id"]}"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="badge st-warning">completed, 2 items failed</span>' in row
    page = web.get(f"/jobs/{job['id']}").text
    assert "completed, 2 items failed" in page and 'id="failed-items"' in page
