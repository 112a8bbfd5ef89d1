"""The login limiter with a real ``pilot server`` on each database (SQLite, PostgreSQL,
MariaDB): tries are taken in the database, so 50 concurrent wrong passwords get at most
the limit of checks; X-Forwarded-For is believed only from a ``--trusted-proxy``, and then
its last hop that is not a trusted proxy is the client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from parallel_pilot.client.local_cluster import LocalCluster
from parallel_pilot.core.settings import DEFAULT_LOGIN_MAX_FAILURES, CoordinatorSettings

API = "/api/v1"
LIMIT = DEFAULT_LOGIN_MAX_FAILURES
CONCURRENT_LOGINS = 50
PASSWORD = "the right one"


@pytest.fixture
def proxied(tmp_path: Path, migrated_database_url: str) -> Iterator[LocalCluster]:
    """A coordinator behind a reverse proxy on 127.0.0.1 (this test plays the proxy)."""
    cluster = LocalCluster(tmp_path / "data", workers=0, env={"PILOT_TOKEN": ""},
                           server_args=["--database-url", migrated_database_url,
                                        "--trusted-proxy", "127.0.0.1"])
    cluster.start_server()
    r = httpx.post(f"{cluster.url}{API}/users", json={"name": "alice", "password": PASSWORD},
                   headers={"Authorization": f"Bearer {cluster.admin_token}"}, timeout=30)
    assert r.status_code == 200, r.text
    try:
        yield cluster
    finally:
        cluster.stop()


def login(cluster: LocalCluster, password: str = "wrong", *,
          forwarded: str | None = None, http: httpx.Client | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    body = {"name": "alice", "password": password}
    if http is not None:
        return http.post("/session", json=body, headers=headers).status_code
    return httpx.post(f"{cluster.url}{API}/session", json=body, headers=headers,
                      timeout=30).status_code


def test_concurrent_wrong_passwords_are_tried_at_most_the_limit(proxied: LocalCluster) -> None:
    barrier = threading.Barrier(CONCURRENT_LOGINS)
    codes: list[int] = []
    lock = threading.Lock()

    def attempt(n: int) -> None:
        with httpx.Client(base_url=proxied.url + API, timeout=60) as http:
            barrier.wait()
            status = login(proxied, f"wrong {n}", forwarded="203.0.113.50", http=http)
        with lock:
            codes.append(status)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(CONCURRENT_LOGINS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(codes) == CONCURRENT_LOGINS and set(codes) <= {401, 429}, codes
    assert 1 <= codes.count(401) <= LIMIT, codes
    assert login(proxied, PASSWORD, forwarded="203.0.113.50") == 429  # the window is used up
    assert login(proxied, PASSWORD, forwarded="203.0.113.51") == 200  # another client's own


def test_the_last_untrusted_hop_is_the_client(proxied: LocalCluster) -> None:
    client = "203.0.113.7"
    assert [login(proxied, forwarded=client) for _ in range(LIMIT)] == [401] * LIMIT
    assert login(proxied, forwarded=client) == 429
    # the client forges hops in front of its own address: the proxy appended the real one
    assert login(proxied, forwarded=f"198.51.100.1, {client}") == 429
    assert login(proxied, forwarded=f"198.51.100.2,{client}") == 429
    # another client behind the same proxy has its own count
    assert login(proxied, forwarded="203.0.113.8") == 401
    # a chain through a second trusted proxy: the hop before it is the client
    assert login(proxied, forwarded=f"{client}, 127.0.0.1") == 429
    # the proxy's own requests (no header) count as the proxy's address
    assert login(proxied, PASSWORD) == 200


def test_forwarded_for_is_ignored_without_a_trusted_proxy(tmp_path: Path,
                                                          migrated_database_url: str) -> None:
    cluster = LocalCluster(tmp_path / "data", workers=0, env={"PILOT_TOKEN": ""},
                           server_args=["--database-url", migrated_database_url])
    cluster.start_server()
    try:
        r = httpx.post(f"{cluster.url}{API}/users", json={"name": "alice", "password": PASSWORD},
                       headers={"Authorization": f"Bearer {cluster.admin_token}"}, timeout=30)
        assert r.status_code == 200, r.text
        codes = [login(cluster, forwarded=f"198.51.100.{n}") for n in range(LIMIT + 2)]
        assert codes == [401] * LIMIT + [429] * 2
    finally:
        cluster.stop()


def test_a_trusted_proxy_must_be_an_address_or_network() -> None:
    assert CoordinatorSettings(trusted_proxies=[" 10.0.0.0/8", "::1"]).trusted_proxies == [
        "10.0.0.0/8", "::1"]
    with pytest.raises(ValidationError, match="not an IP address or network"):
        CoordinatorSettings(trusted_proxies=["proxy.example"])
