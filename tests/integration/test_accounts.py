"""Accounts through the real API: users and roles, own API tokens (revoked, expired),
disabled users, join tokens (uses, revoked) and revoked workers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from parallel_pilot.client.cli import cli
from parallel_pilot.client.cli import common as cli_common
from parallel_pilot.client.sdk import Client
from parallel_pilot.coordinator.passwords import verify_password
from parallel_pilot.core.settings import ClientSettings
from parallel_pilot.store import queries as q
from tests.integration.conftest import Coordinator

API = "/api/v1"
CAPS = {"cpu_cores": 1, "ram_bytes": 2**30, "kinds": ["sleep"]}


def add_user(coord: Coordinator, name: str, *, admin: bool = False) -> dict[str, str]:
    r = coord.client.post(f"{API}/users", headers=coord.user(),
                          json={"name": name, "is_admin": admin})
    assert r.status_code == 200, r.text
    assert r.json()["user"] == name
    return coord.user(r.json()["token"])


def me(coord: Coordinator, headers: dict[str, str]) -> int:
    return coord.client.get(f"{API}/me", headers=headers).status_code


def register(coord: Coordinator, join_token: str, name: str = "w") -> object:
    return coord.client.post(f"{API}/workers/register", json={
        "join_token": join_token, "name": name, "capabilities": CAPS})


def test_admin_password_file_is_private_and_matches(sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    path = coord.data_dir / "admin-password"
    assert path.stat().st_mode & 0o777 == 0o600
    with coord.services.transaction() as conn:
        admin = q.user_by_name(conn, "admin")
    assert verify_password(admin.password_hash, path.read_text().strip())


def test_users_see_only_their_own_tokens(sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    alice, bob = add_user(coord, "alice"), add_user(coord, "bob")
    made = coord.client.post(f"{API}/tokens", headers=alice, json={"name": "laptop"}).json()
    assert made["token"].startswith("pp_u_") and made["name"] == "laptop"
    assert me(coord, coord.user(made["token"])) == 200

    alice_tokens = coord.client.get(f"{API}/tokens", headers=alice).json()["tokens"]
    bob_tokens = coord.client.get(f"{API}/tokens", headers=bob).json()["tokens"]
    assert {t["name"] for t in alice_tokens} == {"first token", "laptop"}
    assert [t["name"] for t in bob_tokens] == ["first token"]
    assert "token" not in alice_tokens[0]  # never shown again
    assert not {t["id"] for t in alice_tokens} & {t["id"] for t in bob_tokens}

    # bob cannot revoke alice's token: 404, and it keeps working
    r = coord.client.delete(f"{API}/tokens/{made['id']}", headers=bob)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert me(coord, coord.user(made["token"])) == 200

    # alice revokes it: refused from now on, and gone from her list
    assert coord.client.delete(f"{API}/tokens/{made['id']}", headers=alice).status_code == 200
    assert me(coord, coord.user(made["token"])) == 401
    assert len(coord.client.get(f"{API}/tokens", headers=alice).json()["tokens"]) == 1
    assert coord.client.delete(f"{API}/tokens/{made['id']}", headers=alice).status_code == 404


def test_expired_token_is_refused(sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    made = coord.client.post(f"{API}/tokens", headers=coord.user(),
                             json={"expires_seconds": 60}).json()
    assert made["expires_at"] == coord.clock() + 60
    assert me(coord, coord.user(made["token"])) == 200
    coord.clock.advance(61)
    r = coord.client.get(f"{API}/me", headers=coord.user(made["token"]))
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    listed = coord.client.get(f"{API}/tokens", headers=coord.user()).json()["tokens"]
    assert [t["expired"] for t in listed if t["id"] == made["id"]] == [True]


def test_non_admin_is_forbidden(sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    alice = add_user(coord, "alice")
    for method, path, body in [
        ("POST", "/users", {"name": "mallory", "is_admin": True}),
        ("GET", "/users", None),
        ("PUT", "/users/admin/password", {"password": "hunter2hunter2"}),
        ("POST", "/users/admin/disable", None),
        ("POST", "/join-tokens", {}),
        ("GET", "/join-tokens", None),
        ("DELETE", "/join-tokens/1", None),
        ("POST", "/workers/1/revoke", None),
    ]:
        r = coord.client.request(method, f"{API}{path}", headers=alice, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"] == "forbidden"
    names = [u["name"] for u in coord.client.get(f"{API}/users", headers=coord.user())
             .json()["users"]]
    assert names == ["admin", "alice"]


def test_user_admin_flow(sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    r = coord.client.post(f"{API}/users", headers=coord.user(),
                          json={"name": "carol", "is_admin": True, "password": "correct horse"})
    assert r.status_code == 200
    carol = coord.user(r.json()["token"])
    assert coord.client.get(f"{API}/me", headers=carol).json() == {"name": "carol",
                                                                   "is_admin": True}
    dup = coord.client.post(f"{API}/users", headers=carol, json={"name": "carol"})
    assert dup.status_code == 409
    bad = coord.client.post(f"{API}/users", headers=carol, json={"name": "../x"})
    assert bad.status_code == 422
    short = coord.client.put(f"{API}/users/carol/password", headers=carol,
                             json={"password": "short"})
    assert short.status_code == 422
    assert coord.client.put(f"{API}/users/nobody/password", headers=carol,
                            json={"password": "long enough"}).status_code == 404
    assert coord.client.put(f"{API}/users/carol/password", headers=carol,
                            json={"password": "battery staple"}).status_code == 200
    with coord.services.transaction() as conn:
        row = q.user_by_name(conn, "carol")
    assert verify_password(row.password_hash, "battery staple")
    assert not verify_password(row.password_hash, "correct horse")
    users = coord.client.get(f"{API}/users", headers=carol).json()["users"]
    assert {u["name"]: u["is_admin"] for u in users} == {"admin": True, "carol": True}
    # an admin cannot lock themselves out
    assert coord.client.post(f"{API}/users/carol/disable", headers=carol).status_code == 409


def test_disabled_user_is_refused(sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    alice = add_user(coord, "alice")
    extra = coord.client.post(f"{API}/tokens", headers=alice, json={}).json()["token"]
    assert me(coord, alice) == 200
    assert coord.client.post(f"{API}/users/alice/disable",
                             headers=coord.user()).status_code == 200
    assert me(coord, alice) == 401
    assert me(coord, coord.user(extra)) == 401
    users = coord.client.get(f"{API}/users", headers=coord.user()).json()["users"]
    assert [u["disabled"] for u in users if u["name"] == "alice"] == [True]


def test_join_token_uses_expiry_and_revocation(coordinator: Coordinator) -> None:
    coord = coordinator
    once = coord.client.post(f"{API}/join-tokens", headers=coord.user(),
                             json={"name": "one", "uses": 1}).json()
    assert once["token"].startswith("pp_j_") and once["uses_left"] == 1
    assert register(coord, once["token"], "a").status_code == 200
    second = register(coord, once["token"], "b")
    assert second.status_code == 401 and "used" in second.json()["message"]

    revoked = coord.client.post(f"{API}/join-tokens", headers=coord.user(), json={}).json()
    assert coord.client.delete(f"{API}/join-tokens/{revoked['id']}",
                               headers=coord.user()).status_code == 200
    r = register(coord, revoked["token"])
    assert r.status_code == 401 and "revoked" in r.json()["message"]

    brief = coord.client.post(f"{API}/join-tokens", headers=coord.user(),
                              json={"expires_seconds": 10}).json()
    coord.clock.advance(11)
    r = register(coord, brief["token"])
    assert r.status_code == 401 and "expired" in r.json()["message"]
    assert register(coord, "pp_j_nonsense").status_code == 401

    states = {t["id"]: t["state"] for t in coord.client.get(
        f"{API}/join-tokens", headers=coord.user()).json()["join_tokens"]}
    assert states[once["id"]] == "used_up" and states[revoked["id"]] == "revoked"
    assert states[brief["id"]] == "expired"
    # the first-start token has no limits and still works
    assert register(coord, coord.join_token, "c").status_code == 200


def test_revoked_worker_loses_its_lease_and_token(coordinator: Coordinator) -> None:
    coord = coordinator
    job = coord.client.post(f"{API}/jobs", headers=coord.user(),
                            json={"kind": "sleep", "params": {"tasks": 1, "milliseconds": 0}})
    assert job.status_code == 201, job.text
    worker = coord.register_worker(kinds=["sleep"])
    leased = coord.client.post(f"{API}/workers/lease", headers=worker,
                               json={"slots": 1, "wait_seconds": 0}).json()["tasks"]
    assert len(leased) == 1
    worker_id = coord.client.get(f"{API}/workers", headers=coord.user()).json()["workers"][0]["id"]

    r = coord.client.post(f"{API}/workers/{worker_id}/revoke", headers=coord.user())
    assert r.status_code == 200, r.text
    task = coord.client.get(f"{API}/jobs/{job.json()['id']}/tasks",
                            headers=coord.user()).json()["tasks"][0]
    assert task["state"] == "ready" and task["failures"] == 0
    hb = coord.client.post(f"{API}/attempts/{leased[0]['task_id']}/{leased[0]['attempt']}"
                           "/heartbeat", headers=worker, json={})
    assert hb.status_code == 401
    lease = coord.client.post(f"{API}/workers/lease", headers=worker,
                              json={"slots": 1, "wait_seconds": 0})
    assert lease.status_code == 401
    listed = coord.client.get(f"{API}/workers", headers=coord.user()).json()["workers"]
    assert listed[0]["state"] == "revoked"
    assert coord.client.post(f"{API}/workers/{worker_id}/revoke",
                             headers=coord.user()).status_code == 409
    assert coord.client.post(f"{API}/workers/999/revoke",
                             headers=coord.user()).status_code == 404
    # another worker picks the task up as a fresh attempt
    other = coord.register_worker(kinds=["sleep"])
    again = coord.client.post(f"{API}/workers/lease", headers=other,
                              json={"slots": 1, "wait_seconds": 0}).json()["tasks"]
    assert [t["task_id"] for t in again] == [leased[0]["task_id"]]


@pytest.fixture
def pilot(sqlite_coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch):
    """Run ``pilot`` in-process against the real app (its TestClient as transport)."""
    transport = sqlite_coordinator.client._transport  # the app, in process

    def make_client(server: str | None, token: str | None,
                    settings: ClientSettings) -> Client:
        return Client("http://testserver", token or sqlite_coordinator.admin_token,
                      transport=transport, retry_seconds=0)

    monkeypatch.setattr(cli_common, "make_client", make_client)
    runner = CliRunner()

    def run(*args: str, input: str | None = None, ok: bool = True):
        result = runner.invoke(cli, list(args), input=input, catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result
    return run


def test_cli_accounts(pilot, sqlite_coordinator: Coordinator) -> None:
    added = json.loads(pilot("users", "add", "dora", "--password-stdin", "--json",
                             input="sunny days\n").stdout)
    assert added["user"] == "dora" and added["token"].startswith("pp_u_")
    listed = json.loads(pilot("users", "list", "--json").stdout)["users"]
    assert [u["name"] for u in listed] == ["admin", "dora"]
    pilot("users", "passwd", "dora", "--password-stdin", input="rainy nights\n")
    made = json.loads(pilot("tokens", "create", "--name", "ci", "--expires", "7d",
                            "--json").stdout)
    assert made["expires_at"] == sqlite_coordinator.clock() + 7 * 86400
    assert "ci" in pilot("tokens", "list").stdout
    pilot("tokens", "revoke", str(made["id"]))
    join = json.loads(pilot("join-tokens", "create", "--uses", "2", "--json").stdout)
    assert join["uses_left"] == 2
    assert "active" in pilot("join-tokens", "list").stdout
    pilot("join-tokens", "revoke", str(join["id"]))
    assert json.loads(pilot("workers", "--json").stdout) == {"workers": []}
    failed = pilot("workers", "revoke", "42", ok=False)
    assert "no worker 42" in failed.stderr
    pilot("users", "disable", "dora")
    assert pilot("tokens", "create", "--expires", "soon", ok=False).exit_code == 2


def test_cli_approves_and_trusts_workers(pilot, sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    join = json.loads(pilot("join-tokens", "create", "--approval", "--max-slots", "2",
                            "--json").stdout)
    assert join["approval_required"] is True and join["max_slots"] == 2
    listed = pilot("join-tokens", "list").stdout
    assert "required" in listed
    r = coord.client.post(f"{API}/workers/register", json={
        "join_token": join["token"], "name": "stranger", "capabilities": {
            "cpu_cores": 8, "ram_bytes": 2**30, "slots": 8, "sandbox": True}})
    assert r.status_code == 200 and r.json()["pending"] and r.json()["slots"] == 2
    worker_id = r.json()["worker_id"]
    [shown] = json.loads(pilot("workers", "--json").stdout)["workers"]
    assert shown["state"] == "pending" and shown["slots"] == 2
    assert shown["claimed"]["sandbox"] is True and shown["trusted"] is False
    table = pilot("workers").stdout
    assert "claimed by the worker" in table and "✓" not in table.splitlines()[2]
    pilot("workers", "approve", str(worker_id))
    assert "not waiting for approval" in pilot("workers", "approve", str(worker_id),
                                              ok=False).stderr
    pilot("workers", "trust", str(worker_id))
    [shown] = json.loads(pilot("workers", "--json").stdout)["workers"]
    assert shown["state"] == "idle" and shown["trusted"] is True
    assert "cmd ✓" in pilot("workers").stdout
    pilot("workers", "untrust", str(worker_id))
    assert json.loads(pilot("workers", "--json").stdout)["workers"][0]["trusted"] is False
    assert "no worker 99" in pilot("workers", "trust", "99", ok=False).stderr
