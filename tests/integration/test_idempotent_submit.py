"""A job submission whose answer is lost makes one job, not two: the SDK sends an
``Idempotency-Key`` (the same on each try) and the coordinator answers a repeated key with
the job it already made; a POST without a key is not sent again once it may have reached
the coordinator. Through a real coordinator behind a loopback proxy that drops the answer
of the first submission, and through the API on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from parallel_pilot.client.local_cluster import LocalCluster
from parallel_pilot.client.sdk import Client
from parallel_pilot.errors import ServerUnavailable
from parallel_pilot.http import IDEMPOTENCY_HEADER, Connection
from tests.integration.conftest import Coordinator

API = "/api/v1"
SUBMIT_LINE = b"POST /api/v1/jobs "  # how a submission's request starts
PUMP_BYTES = 65536
SLEEP_JOB = {"kind": "sleep", "params": {"tasks": 2, "milliseconds": 0}}


class DroppingProxy:
    """Forwards loopback connections to ``port``; the answers to the first ``drops``
    submissions are not passed on: the connection is closed once the coordinator has
    answered, as a network that fails at the worst moment would."""

    def __init__(self, port: int, drops: int = 1) -> None:
        self.port, self.drops = port, drops
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            pending = threading.Event()  # a submission to drop is on its way
            threading.Thread(target=self._upstream, args=(client, server, pending),
                             daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, pending),
                             daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket,
                  pending: threading.Event) -> None:
        with client, server:
            while data := _recv(client):
                if data.startswith(SUBMIT_LINE):
                    with self._lock:
                        if self.dropped < self.drops:
                            self.dropped += 1
                            pending.set()
                try:
                    server.sendall(data)
                except OSError:
                    return

    def _downstream(self, server: socket.socket, client: socket.socket,
                    pending: threading.Event) -> None:
        while data := _recv(server):
            if pending.is_set():  # the coordinator answered the submission: lose it
                for sock in (client, server):
                    _close(sock)
                return
            try:
                client.sendall(data)
            except OSError:
                return
        _close(client)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(PUMP_BYTES)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), workers=0) as running:
        yield running


def job_ids(cluster: LocalCluster) -> list[int]:
    with Client(cluster.url, cluster.admin_token) as direct:
        return sorted(j.id for j in direct.jobs())


def test_a_submit_whose_answer_was_lost_makes_one_job(cluster: LocalCluster) -> None:
    before = job_ids(cluster)
    proxy = DroppingProxy(cluster.port)
    try:
        with Client(proxy.url, cluster.admin_token) as client:
            client.me()  # the coordinator has answered this client: outages are retried
            job = client.submit("sleep", SLEEP_JOB["params"])
    finally:
        proxy.close()
    assert proxy.dropped == 1  # the first answer was lost, the retry got through
    made = [j for j in job_ids(cluster) if j not in before]
    assert made == [job.id]
    assert job.tasks_total == 2


def test_a_post_without_a_key_is_not_sent_again(cluster: LocalCluster) -> None:
    before = job_ids(cluster)
    proxy = DroppingProxy(cluster.port)
    try:
        with Connection(proxy.url, cluster.admin_token) as connection:
            connection.call("GET", "/me")
            with pytest.raises(ServerUnavailable, match="not sent again"):
                connection.call("POST", "/jobs", body=SLEEP_JOB)
    finally:
        proxy.close()
    assert proxy.dropped == 1
    assert len([j for j in job_ids(cluster) if j not in before]) == 1  # made once, not twice


def submit(coord: Coordinator, key: str | None, token: str | None = None) -> tuple[int, dict]:
    headers = {**coord.user(token), **({IDEMPOTENCY_HEADER: key} if key else {})}
    r = coord.client.post(f"{API}/jobs", headers=headers, json=SLEEP_JOB)
    return r.status_code, r.json()


def test_a_repeated_key_gets_the_job_it_made(coordinator: Coordinator) -> None:
    status, first = submit(coordinator, "key-1")
    again_status, again = submit(coordinator, "key-1")
    assert status == again_status == 201
    assert again == first
    other_status, other = submit(coordinator, "key-2")
    assert other_status == 201 and other["id"] != first["id"]
    _, unkeyed = submit(coordinator, None)
    _, unkeyed_again = submit(coordinator, None)
    assert unkeyed["id"] != unkeyed_again["id"]  # no key: each POST is a job
    listed = coordinator.client.get(f"{API}/jobs", headers=coordinator.user()).json()["jobs"]
    assert len(listed) == 4


def test_keys_belong_to_their_user(coordinator: Coordinator) -> None:
    r = coordinator.client.post(f"{API}/users", headers=coordinator.user(),
                                json={"name": "bob", "password": "correct horse battery"})
    assert r.status_code in (200, 201), r.text
    bob = r.json()["token"]
    _, mine = submit(coordinator, "shared-key")
    status, bobs = submit(coordinator, "shared-key", bob)
    assert status == 201 and bobs["id"] != mine["id"] and bobs["owner"] == "bob"


@pytest.mark.parametrize("key", ["x" * 101, ""])
def test_a_bad_key_is_refused(sqlite_coordinator: Coordinator, key: str) -> None:
    headers = {**sqlite_coordinator.user(), IDEMPOTENCY_HEADER: key}
    r = sqlite_coordinator.client.post(f"{API}/jobs", headers=headers, json=SLEEP_JOB)
    assert r.status_code == 400, r.text
    assert "Idempotency-Key" in r.json()["message"]


def test_keyed_and_fenced_posts_are_replayable() -> None:
    from parallel_pilot.http import replayable

    assert not replayable("POST", "/jobs")
    assert replayable("POST", "/jobs", "k")
    assert replayable("POST", "/workers/sync") and replayable("POST", "/attempts/1/2/outputs")
    assert replayable("GET", "/jobs") and replayable("PUT", "/blobs/ab")
    assert replayable("POST", "/jobs/3/cancel") and not replayable("POST", "/jobs/3/tasks/cancel")
    assert not replayable("POST", "/jobs/3/retry") and not replayable("POST", "/tokens")
