"""Where the client finds server and token: flags > PILOT_* > the saved login."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from parallel_pilot.client import config
from parallel_pilot.core.settings import ClientSettings
from parallel_pilot.errors import InvalidInput, Unauthorized


@pytest.fixture
def settings_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PILOT_SERVER", raising=False)
    monkeypatch.delenv("PILOT_TOKEN", raising=False)
    config_file = tmp_path / "cfg" / "config.json"

    def make(**env: str) -> ClientSettings:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return ClientSettings(config_file=config_file)

    make.config_file = config_file  # type: ignore[attr-defined]
    return make


def test_flags_win_over_environment_and_file(settings_for) -> None:
    config.write_config_file(settings_for.config_file, "http://saved:1", "saved-token")
    settings = settings_for(PILOT_SERVER="http://env:2", PILOT_TOKEN="env-token")
    got = config.resolve("http://flag:3/", "flag-token", settings)
    assert got == config.ClientConfig("http://flag:3", "flag-token")


def test_environment_wins_over_file(settings_for) -> None:
    config.write_config_file(settings_for.config_file, "http://saved:1", "saved-token")
    settings = settings_for(PILOT_SERVER="http://env:2", PILOT_TOKEN="env-token")
    assert config.resolve(None, None, settings) == config.ClientConfig("http://env:2",
                                                                        "env-token")


def test_saved_login_is_used_last(settings_for) -> None:
    config.write_config_file(settings_for.config_file, "http://saved:1", "saved-token")
    got = config.resolve(None, None, settings_for())
    assert got == config.ClientConfig("http://saved:1", "saved-token")


def test_saved_token_is_not_sent_to_another_server(settings_for) -> None:
    config.write_config_file(settings_for.config_file, "http://saved:1", "saved-token")
    with pytest.raises(Unauthorized) as info:
        config.resolve("http://other:9", None, settings_for())
    assert info.value.message == ("not logged in to http://other:9: run pilot login "
                                  "--server http://other:9, or pass --token")


def test_no_token_is_a_clear_error(settings_for) -> None:
    with pytest.raises(Unauthorized) as info:
        config.resolve(None, None, settings_for())
    assert info.value.message == (f"{config.NO_TOKEN_MESSAGE} --server "
                                  f"{config.DEFAULT_SERVER}")
    # a command that needs no token (login, health) still gets the default server
    assert config.resolve(None, None, settings_for(), require_token=False).server == (
        config.DEFAULT_SERVER)


def test_config_file_is_private(settings_for) -> None:
    config.write_config_file(settings_for.config_file, "http://s:1", "secret")
    assert stat.S_IMODE(settings_for.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings_for.config_file.parent.stat().st_mode) == 0o700
    assert config.read_config_file(settings_for.config_file) == config.SavedLogins(
        server="http://s:1", tokens={"http://s:1": "secret"})


def test_unreadable_config_file_counts_as_absent(settings_for) -> None:
    settings_for.config_file.parent.mkdir(parents=True)
    settings_for.config_file.write_text("not json")
    assert config.read_config_file(settings_for.config_file) == config.SavedLogins()


def test_each_server_keeps_its_own_token(settings_for) -> None:
    path = settings_for.config_file
    config.write_config_file(path, "http://a:1", "token-a")
    config.write_config_file(path, "http://b:2/", "token-b")  # the last login is the default
    assert json.loads(path.read_text()) == {
        "server": "http://b:2", "token": "token-b", "other_servers": {"http://a:1": "token-a"}}
    settings = settings_for()
    assert config.resolve(None, None, settings) == config.ClientConfig("http://b:2", "token-b")
    assert config.resolve("http://a:1", None, settings) == config.ClientConfig("http://a:1",
                                                                                "token-a")
    assert config.resolve("a:1", None, settings).token == "token-a"  # same server, no scheme
    config.write_config_file(path, "http://a:1", "token-a2")  # a new login replaces its token
    saved = config.read_config_file(path)
    assert saved.server == "http://a:1"
    assert saved.tokens == {"http://a:1": "token-a2", "http://b:2": "token-b"}


def test_an_old_config_file_reads_as_one_login(settings_for) -> None:
    path = settings_for.config_file
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"server": "http://old:7/", "token": "old-token"}))
    got = config.resolve(None, None, settings_for())
    assert got == config.ClientConfig("http://old:7", "old-token")
    config.write_config_file(path, "http://new:8", "new-token")  # the old login is kept
    assert config.resolve("http://old:7", None, settings_for()).token == "old-token"


def test_saved_entries_that_are_not_urls_are_skipped(settings_for) -> None:
    path = settings_for.config_file
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"server": "http://ok:1", "token": "t",
                                "other_servers": {"ftp://x": "bad", "http://": "bad",
                                                  "http://two:2": 5, "http://three:3": "t3"}}))
    assert config.read_config_file(path).tokens == {"http://ok:1": "t", "http://three:3": "t3"}


def test_server_from_the_environment_is_normalised_or_refused(settings_for) -> None:
    config.write_config_file(settings_for.config_file, "http://127.0.0.1:8330", "saved")
    got = config.resolve(None, None, settings_for(PILOT_SERVER="127.0.0.1:8330"))
    assert got == config.ClientConfig("http://127.0.0.1:8330", "saved")
    with pytest.raises(InvalidInput, match="^PILOT_SERVER 'ftp://x': "):
        config.resolve(None, None, settings_for(PILOT_SERVER="ftp://x"))
    with pytest.raises(InvalidInput, match="^--server 'http://': has no host"):
        config.resolve("http://", None, settings_for())
