"""A worker that registers again with the id and token it was given takes its row back
(issue 12): the token is checked against the row's stored hash, the row keeps its
tasks_done, gets a new token and the new capabilities, and what it held is requeued. A
wrong, revoked or someone else's token, or another name, gets a new row as before. And
the worker's side: the state file it keeps the id and token in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from parallel_pilot.coordinator.tokens import hash_token
from parallel_pilot.store.tables import workers as workers_table
from parallel_pilot.worker.identity import Registration, WorkerIdentity, identity_dir
from tests.integration.conftest import Coordinator

API = "/api/v1"


def register(coord: Coordinator, name: str, *, cores: int = 2,
             worker_id: int | None = None, token: str | None = None,
             join_token: str | None = None) -> Any:
    body: dict[str, Any] = {
        "join_token": join_token or coord.join_token, "name": name,
        "capabilities": {"cpu_cores": cores, "ram_bytes": 2**30, "kinds": ["sleep"]},
    }
    if worker_id is not None:
        body["worker_id"] = worker_id
    if token is not None:
        body["worker_token"] = token
    response = coord.client.post(f"{API}/workers/register", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def listed(coord: Coordinator) -> dict[int, dict[str, Any]]:
    rows = coord.client.get(f"{API}/workers", headers=coord.user()).json()["workers"]
    return {w["id"]: w for w in rows}


def stored_hash(coord: Coordinator, worker_id: int) -> str:
    with coord.services.engine.connect() as conn:
        return conn.execute(sa.select(workers_table.c.token_hash)
                            .where(workers_table.c.id == worker_id)).scalar_one()


def run_one_task(coord: Coordinator, token: str) -> None:
    job = coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": "sleep", "params": {"tasks": 1, "milliseconds": 0}})
    assert job.status_code == 201, job.text
    task = coord.client.post(f"{API}/workers/lease", headers=bearer(token),
                             json={"slots": 1, "wait_seconds": 0}).json()["tasks"][0]
    done = coord.client.post(f"{API}/attempts/{task['task_id']}/{task['attempt']}/complete",
                             headers=bearer(token), json={"result": {}})
    assert done.status_code == 200, done.text


def test_the_same_worker_takes_its_row_back(coordinator: Coordinator) -> None:
    coord = coordinator
    first = register(coord, "box")
    run_one_task(coord, first["worker_token"])
    assert coord.client.post(f"{API}/workers/leave",
                             headers=bearer(first["worker_token"])).status_code == 200
    assert listed(coord)[first["worker_id"]]["state"] == "offline"

    again = register(coord, "box", cores=8, worker_id=first["worker_id"],
                     token=first["worker_token"])
    assert again["worker_id"] == first["worker_id"]
    assert again["worker_token"] != first["worker_token"]
    rows = listed(coord)
    assert list(rows) == [first["worker_id"]]
    row = rows[first["worker_id"]]
    assert row["tasks_done"] == 1 and row["state"] == "idle"
    assert row["capabilities"]["cpu_cores"] == 8
    # only the hash of the new token is stored; the old token no longer works
    assert stored_hash(coord, first["worker_id"]) == hash_token(again["worker_token"])
    assert stored_hash(coord, first["worker_id"]) != again["worker_token"]
    assert coord.client.post(f"{API}/workers/lease", headers=bearer(first["worker_token"]),
                             json={"slots": 1, "wait_seconds": 0}).status_code == 401
    assert coord.client.post(f"{API}/workers/lease", headers=bearer(again["worker_token"]),
                             json={"slots": 1, "wait_seconds": 0}).status_code == 200


def test_a_wrong_token_or_name_gets_a_new_row(coordinator: Coordinator) -> None:
    coord = coordinator
    mine = register(coord, "mine")
    other = register(coord, "other")
    token = mine["worker_token"]

    forged = register(coord, "mine", worker_id=mine["worker_id"], token=token[:-4] + "AAAA")
    not_a_worker_token = register(coord, "mine", worker_id=mine["worker_id"],
                                  token=coord.admin_token)
    someone_elses = register(coord, "other", worker_id=other["worker_id"], token=token)
    renamed = register(coord, "renamed", worker_id=mine["worker_id"], token=token)
    # a hash in place of the token is not the token
    by_hash = register(coord, "mine", worker_id=mine["worker_id"],
                       token=stored_hash(coord, mine["worker_id"]))
    new_ids = {r["worker_id"] for r in (forged, not_a_worker_token, someone_elses, renamed,
                                        by_hash)}
    assert len(new_ids) == 5 and not new_ids & {mine["worker_id"], other["worker_id"]}
    # none of that took anything from the rows it named
    assert stored_hash(coord, mine["worker_id"]) == hash_token(token)
    assert stored_hash(coord, other["worker_id"]) == hash_token(other["worker_token"])
    assert register(coord, "mine", worker_id=mine["worker_id"],
                    token=token)["worker_id"] == mine["worker_id"]


def test_a_new_row_still_needs_a_valid_join_token(coordinator: Coordinator) -> None:
    coord = coordinator
    mine = register(coord, "mine")
    bad = coord.client.post(f"{API}/workers/register", json={
        "join_token": "pp_j_nonsense", "name": "mine", "worker_id": mine["worker_id"],
        "worker_token": "pp_w_forged",
        "capabilities": {"cpu_cores": 2, "ram_bytes": 2**30, "kinds": ["sleep"]}})
    assert bad.status_code == 401
    # taking a row back proves itself with the worker token: no join token use is spent
    once = coord.client.post(f"{API}/join-tokens", headers=coord.user(),
                             json={"name": "one", "uses": 1}).json()
    joined = register(coord, "volunteer", join_token=once["token"])
    back = register(coord, "volunteer", join_token=once["token"],
                    worker_id=joined["worker_id"], token=joined["worker_token"])
    assert back["worker_id"] == joined["worker_id"]


def test_a_revoked_worker_does_not_come_back(coordinator: Coordinator) -> None:
    coord = coordinator
    first = register(coord, "box")
    assert coord.client.post(f"{API}/workers/{first['worker_id']}/revoke",
                             headers=coord.user()).status_code == 200
    again = register(coord, "box", worker_id=first["worker_id"], token=first["worker_token"])
    assert again["worker_id"] != first["worker_id"]
    rows = listed(coord)
    assert rows[first["worker_id"]]["state"] == "revoked"
    assert rows[again["worker_id"]]["state"] == "idle"


def test_tasks_the_old_process_held_are_requeued(coordinator: Coordinator) -> None:
    coord = coordinator
    first = register(coord, "box")
    job = coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": "sleep", "params": {"tasks": 1, "milliseconds": 0}}).json()
    leased = coord.client.post(f"{API}/workers/lease", headers=bearer(first["worker_token"]),
                               json={"slots": 1, "wait_seconds": 0}).json()["tasks"]
    assert len(leased) == 1
    # the process was killed and started again: it runs nothing of what the row held
    again = register(coord, "box", worker_id=first["worker_id"], token=first["worker_token"])
    task = coord.client.get(f"{API}/jobs/{job['id']}/tasks",
                            headers=coord.user()).json()["tasks"][0]
    assert task["state"] == "ready" and task["failures"] == 0
    relet = coord.client.post(f"{API}/workers/lease", headers=bearer(again["worker_token"]),
                              json={"slots": 1, "wait_seconds": 0}).json()["tasks"]
    assert [(t["task_id"], t["attempt"]) for t in relet] == [
        (leased[0]["task_id"], leased[0]["attempt"] + 1)]


# ---------------------------------------------------------------- the worker's state file


def test_the_state_file_is_private_locked_and_per_server(tmp_path: Path) -> None:
    folder = identity_dir(tmp_path / "cache")
    mine = WorkerIdentity(folder, "box")
    assert mine.acquire()
    assert mine.load("http://a:8330") is None
    mine.save("http://a:8330/", Registration(7, "pp_w_seven"))
    mine.save("http://b:8330", Registration(3, "pp_w_three"))
    assert mine.path.stat().st_mode & 0o777 == 0o600
    assert mine.load("http://a:8330") == Registration(7, "pp_w_seven")
    assert mine.load("http://b:8330/") == Registration(3, "pp_w_three")
    assert mine.load("http://c:8330") is None  # a token goes only where it came from

    # a second worker of that name on this cache dir neither reads nor writes it
    twin = WorkerIdentity(folder, "box")
    assert not twin.acquire()
    assert twin.load("http://a:8330") is None
    twin.save("http://a:8330", Registration(9, "pp_w_nine"))
    mine.release()
    again = WorkerIdentity(folder, "box")
    assert again.acquire() and again.load("http://a:8330") == Registration(7, "pp_w_seven")
    again.release()

    # names that are no file names get a stable file of their own
    odd = WorkerIdentity(folder, "../a b/ü")
    assert odd.path.parent == folder and odd.path == WorkerIdentity(folder, "../a b/ü").path
    mine.path.write_text("{not json")
    broken = WorkerIdentity(folder, "box")
    assert broken.acquire() and broken.load("http://a:8330") is None
    broken.release()
