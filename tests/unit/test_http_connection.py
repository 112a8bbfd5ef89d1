"""The HTTP seam when the coordinator cannot be reached: interactive connections give up
at once before the first answer, ride out restarts after it, and announce long retries;
coordinator URLs are normalised or refused clearly."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from parallel_pilot.core.protocol import Health
from parallel_pilot.core.urls import normalize_server
from parallel_pilot.errors import InvalidInput, ServerUnavailable
from parallel_pilot.http import (
    INTERACTIVE_FIRST_CONTACT_SECONDS,
    NOTICE_MIN_SECONDS,
    RETRY_BACKOFF_MAX,
    RETRY_SECONDS,
    Connection,
)

REFUSED = "[Errno 111] Connection refused"


class FakeClock:
    """Time that passes only when the connection sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def coordinator(down: Callable[[], bool]) -> httpx.MockTransport:
    """Answers /health unless ``down()``, in which case the connection is refused."""
    def handler(request: httpx.Request) -> httpx.Response:
        if down():
            raise httpx.ConnectError(REFUSED, request=request)
        return httpx.Response(200, json={"ok": True, "version": "test"})
    return httpx.MockTransport(handler)


def connect(transport: httpx.MockTransport, clock: FakeClock, notices: list[str], *,
            interactive: bool, retry_seconds: float = RETRY_SECONDS) -> Connection:
    return Connection("http://127.0.0.1:8391", transport=transport, interactive=interactive,
                      retry_seconds=retry_seconds, sleep=clock.sleep, clock=clock,
                      notify=notices.append)


def test_interactive_gives_up_at_once_before_the_first_answer() -> None:
    clock, notices = FakeClock(), list[str]()
    conn = connect(coordinator(lambda: True), clock, notices, interactive=True)
    start = clock.now
    with pytest.raises(ServerUnavailable) as info:
        conn.call("GET", "/health", Health)
    assert clock.now - start <= INTERACTIVE_FIRST_CONTACT_SECONDS
    assert info.value.message == (
        "cannot reach the coordinator at http://127.0.0.1:8391 (connection refused); "
        "is it running? (pilot up, or pilot server)")
    assert notices == []  # too short to announce: the error says it all


def test_interactive_rides_out_a_restart_once_it_was_answered() -> None:
    clock, notices = FakeClock(), list[str]()
    down_until = [0.0]
    conn = connect(coordinator(lambda: clock.now < down_until[0]), clock, notices,
                   interactive=True)
    assert conn.call("GET", "/health", Health).ok
    down_until[0] = clock.now + 20  # a restart of 20 s
    assert conn.call("GET", "/health", Health).ok
    lost, back = notices
    assert lost == ("cannot reach the coordinator at http://127.0.0.1:8391 "
                    "(connection refused); retrying for up to 120 s…")
    waited = re.fullmatch(r"the coordinator at http://127.0.0.1:8391 answers again "
                          r"\(after (\d+) s\)", back)
    assert waited and 20 <= int(waited[1]) <= 20 + RETRY_BACKOFF_MAX


def test_worker_connection_retries_long_and_says_so_once() -> None:
    clock, notices = FakeClock(), list[str]()
    conn = connect(coordinator(lambda: True), clock, notices, interactive=False)
    start = clock.now
    with pytest.raises(ServerUnavailable, match="for 120 s"):
        conn.call("POST", "/attempts/1/1/complete", body={})
    assert clock.now - start == pytest.approx(RETRY_SECONDS)
    assert len(notices) == 1 and "retrying for up to 120 s" in notices[0]
    with pytest.raises(ServerUnavailable):  # the next call that waits says so again
        conn.call("POST", "/attempts/1/1/complete", body={})
    assert len(notices) == 2


def test_short_retries_are_not_announced() -> None:
    clock, notices = FakeClock(), list[str]()
    conn = connect(coordinator(lambda: True), clock, notices, interactive=False,
                   retry_seconds=NOTICE_MIN_SECONDS / 2)
    with pytest.raises(ServerUnavailable):
        conn.call("POST", "/workers/lease", body={})
    assert notices == []


def test_a_gateway_error_is_retried_like_an_outage() -> None:
    clock, notices = FakeClock(), list[str]()
    answers = iter([502, 503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        return httpx.Response(status, json={"ok": True, "version": "test"} if status == 200
                              else {"error": "server_unavailable", "message": "down"})

    conn = connect(httpx.MockTransport(handler), clock, notices, interactive=False)
    assert conn.call("GET", "/health", Health).ok
    assert notices[0].endswith("(HTTP 502); retrying for up to 120 s…")
    assert notices[1].startswith("the coordinator at http://127.0.0.1:8391 answers again")


def test_event_stream_of_a_never_answered_interactive_connection_fails_clearly() -> None:
    clock, notices = FakeClock(), list[str]()
    conn = connect(coordinator(lambda: True), clock, notices, interactive=True)
    with pytest.raises(ServerUnavailable, match="connection refused"):
        next(conn.events("/jobs/1/events"))


def test_event_stream_lost_after_an_answer_is_announced_for_the_caller_to_reopen() -> None:
    clock, notices = FakeClock(), list[str]()
    down = [False]
    conn = connect(coordinator(lambda: down[0]), clock, notices, interactive=True)
    conn.call("GET", "/health", Health)
    down[0] = True
    with pytest.raises(httpx.ConnectError):
        next(conn.events("/jobs/1/events"))
    assert notices and "retrying for up to 120 s" in notices[0]


def test_an_unknown_host_is_named_so() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)

    clock, notices = FakeClock(), list[str]()
    conn = connect(httpx.MockTransport(handler), clock, notices, interactive=True)
    with pytest.raises(ServerUnavailable) as info:
        conn.call("GET", "/health", Health)
    assert info.value.message.endswith("(unknown host); is the host name right?")


def test_download_of_a_never_answered_interactive_connection_fails_fast(tmp_path) -> None:
    clock, notices = FakeClock(), list[str]()
    conn = connect(coordinator(lambda: True), clock, notices, interactive=True)
    start = clock.now
    with pytest.raises(ServerUnavailable, match="connection refused"):
        conn.download_blob("ab" * 32, tmp_path / "blob")
    assert clock.now - start <= INTERACTIVE_FIRST_CONTACT_SECONDS


@pytest.mark.parametrize("given, expected", [
    ("http://127.0.0.1:8330", "http://127.0.0.1:8330"),
    ("http://127.0.0.1:8330/", "http://127.0.0.1:8330"),
    ("  https://Farm.Example.org/pilot/ ", "https://farm.example.org/pilot"),
    ("127.0.0.1:8330", "http://127.0.0.1:8330"),
    ("localhost:8330", "http://localhost:8330"),
    ("localhost", "http://localhost"),
    ("HTTP://[::1]:8330", "http://[::1]:8330"),
])
def test_coordinator_urls_are_normalised(given: str, expected: str) -> None:
    assert normalize_server(given) == expected


@pytest.mark.parametrize("given, why", [
    ("", "is empty"),
    ("http://", "has no host"),
    ("http://:8330", "has no host"),
    ("ftp://x", "http:// or https://, not ftp://"),
    ("http://local host:8330", "contains a space"),
    ("http:/127.0.0.1:8330", "is not a URL"),
    ("ftp:x", "is not a URL"),
    ("http://h:99999", "port"),
    ("http://h:abc", "port"),
    ("http://h:0", "port"),
    ("http://h:1/?x=1", "query or fragment"),
])
def test_malformed_urls_are_refused_with_how_to_write_them(given: str, why: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_server(given, source="--server")
    assert info.value.message.startswith(f"--server {given!r}: ")
    assert why in info.value.message
    assert info.value.message.endswith("write it as http://HOST:PORT (e.g. http://127.0.0.1:8330)")


def test_a_connection_refuses_a_malformed_url_before_any_request() -> None:
    with pytest.raises(InvalidInput, match="has no host"):
        Connection("http://")


def farm(down: set[str], seen: list[str]) -> httpx.MockTransport:
    """Coordinators by host: those in ``down`` refuse connections; ``seen`` lists the
    hosts tried, in order."""
    def handler(request: httpx.Request) -> httpx.Response:
        host = f"{request.url.host}:{request.url.port}"
        seen.append(host)
        if host in down:
            raise httpx.ConnectError(REFUSED, request=request)
        return httpx.Response(200, json={"ok": True, "version": host})
    return httpx.MockTransport(handler)


def test_several_coordinators_are_given_as_a_list_or_with_commas() -> None:
    conn = Connection(["127.0.0.1:8001", "http://127.0.0.1:8002/"])
    assert conn.servers == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert conn.server == "http://127.0.0.1:8001"
    assert Connection("127.0.0.1:8001, 127.0.0.1:8002,127.0.0.1:8001").servers == \
        ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]  # in order, once each
    with pytest.raises(InvalidInput, match="'nope://x'"):
        Connection("127.0.0.1:8001,nope://x")


def test_a_call_moves_to_the_next_coordinator_at_once_and_stays_there() -> None:
    clock, seen = FakeClock(), list[str]()
    down = {"127.0.0.1:8001"}
    conn = Connection("127.0.0.1:8001,127.0.0.1:8002", transport=farm(down, seen),
                      sleep=clock.sleep, clock=clock)
    assert conn.call("GET", "/health", Health).version == "127.0.0.1:8002"
    assert clock.now == 1000.0  # no wait: the other coordinator answered
    assert conn.server == "http://127.0.0.1:8002"
    conn.call("GET", "/health", Health)
    assert seen == ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8002"]
    down.add("127.0.0.1:8002")  # now that one goes too, and the first is back
    down.discard("127.0.0.1:8001")
    assert conn.call("GET", "/health", Health).version == "127.0.0.1:8001"


def test_with_every_coordinator_down_a_worker_waits_and_goes_round() -> None:
    clock, seen, notices = FakeClock(), list[str](), list[str]()
    down = {"127.0.0.1:8001", "127.0.0.1:8002"}
    conn = Connection("127.0.0.1:8001,127.0.0.1:8002", transport=farm(down, seen),
                      sleep=clock.sleep, clock=clock, notify=notices.append,
                      retry_seconds=30)
    with pytest.raises(ServerUnavailable, match="any of the coordinators at "
                       "http://127.0.0.1:8001, http://127.0.0.1:8002"):
        conn.call("GET", "/health", Health)
    assert clock.now - 1000.0 >= 30  # it waited out its window, going round
    assert {"127.0.0.1:8001", "127.0.0.1:8002"} <= set(seen[-4:])
    # one notice that it moved on, one that it retries; not one per round
    assert len(notices) == 2 and "trying http://127.0.0.1:8002" in notices[0]
    assert "cannot reach any of the coordinators" in notices[1]
