"""How the CLI finds a coordinator: ``--server`` without a scheme, malformed URLs as usage
errors, a token per server from ``pilot login``, and how to log in to another one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from parallel_pilot.client import Client
from parallel_pilot.client.cli import cli, common
from parallel_pilot.client.cli.common import EXIT_USAGE, CliState
from parallel_pilot.client.fake_coordinator import FAKE_TOKEN, FakeCoordinator
from parallel_pilot.core.settings import ClientSettings


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """The (server, token) each command's Client resolved; every server is the fake."""
    fake = FakeCoordinator()
    resolved: list[tuple[str, str | None]] = []

    def make_client(server: str | None, token: str | None,
                    settings: ClientSettings) -> Client:
        client = Client(server, token, settings=settings, transport=fake.transport(),
                        sleep=lambda s: None)
        auth = client.connection._client.headers.get("Authorization", "")
        resolved.append((client.server, auth.removeprefix("Bearer ") or None))
        return client

    monkeypatch.setattr(common, "make_client", make_client)
    return resolved


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PILOT_SERVER", raising=False)
    monkeypatch.delenv("PILOT_TOKEN", raising=False)
    settings = ClientSettings(config_file=tmp_path / "config.json")

    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), obj=CliState(settings), input=input)

    invoke.settings = settings  # type: ignore[attr-defined]
    return invoke


def test_server_without_a_scheme_is_taken_as_http(seen, run) -> None:
    login = run("login", "--server", "127.0.0.1:8330", "--token", FAKE_TOKEN)
    assert login.exit_code == 0, login.output
    assert login.stdout.startswith("logged in to http://127.0.0.1:8330 as ")
    listed = run("jobs", "--server", "localhost:8330", "--token", FAKE_TOKEN, "--json")
    assert listed.exit_code == 0, listed.output
    assert seen[-1] == ("http://localhost:8330", FAKE_TOKEN)


@pytest.mark.parametrize("url, why", [
    ("http://", "has no host"),
    ("ftp://x", "http:// or https://, not ftp://"),
    ("http://a b:1", "contains a space"),
])
def test_malformed_server_is_a_usage_error(seen, run, url: str, why: str) -> None:
    for args in (["jobs", "--server", url], ["login", "--server", url, "--token", "t"]):
        result = run(*args)
        assert result.exit_code == EXIT_USAGE, result.output
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: --server {url!r}: ") and why in line
        assert "Traceback" not in result.output
    assert seen == []  # refused before any Client was made


def test_each_login_keeps_its_token_for_its_server(seen, run) -> None:
    assert run("login", "--server", "http://a:1", "--token", FAKE_TOKEN).exit_code == 0
    assert run("login", "--server", "http://b:2/", input=FAKE_TOKEN + "\n").exit_code == 0
    saved = json.loads(run.settings.config_file.read_text())
    assert saved == {"server": "http://b:2", "token": FAKE_TOKEN,
                     "other_servers": {"http://a:1": FAKE_TOKEN}}
    seen.clear()
    assert run("jobs", "--json").exit_code == 0
    assert run("jobs", "--server", "http://a:1", "--json").exit_code == 0
    assert run("jobs", "--server", "a:1", "--json").exit_code == 0
    assert seen == [("http://b:2", FAKE_TOKEN), ("http://a:1", FAKE_TOKEN),
                    ("http://a:1", FAKE_TOKEN)]


def test_another_server_without_a_login_says_how_to_log_in(seen, run) -> None:
    assert run("login", "--server", "http://a:1", "--token", FAKE_TOKEN).exit_code == 0
    result = run("jobs", "--server", "http://other:8330")
    assert result.exit_code == 1
    assert result.stderr == ("error: not logged in to http://other:8330: run pilot login "
                             "--server http://other:8330, or pass --token\n")
    assert result.stdout == ""
