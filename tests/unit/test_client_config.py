"""Where the client finds server and token: flags > PILOT_* > the saved login."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from parallel_pilot.client import config
from parallel_pilot.core.settings import ClientSettings
from parallel_pilot.errors import Unauthorized


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
    with pytest.raises(Unauthorized, match="no token"):
        config.resolve("http://other:9", None, settings_for())


def test_no_token_is_a_clear_error(settings_for) -> None:
    with pytest.raises(Unauthorized) as info:
        config.resolve(None, None, settings_for())
    assert info.value.message == config.NO_TOKEN_MESSAGE
    # a command that needs no token (login, health) still gets the default server
    assert config.resolve(None, None, settings_for(), require_token=False).server == (
        config.DEFAULT_SERVER)


def test_config_file_is_private(settings_for) -> None:
    config.write_config_file(settings_for.config_file, "http://s:1", "secret")
    assert stat.S_IMODE(settings_for.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings_for.config_file.parent.stat().st_mode) == 0o700
    assert config.read_config_file(settings_for.config_file) == {"server": "http://s:1",
                                                                 "token": "secret"}


def test_unreadable_config_file_counts_as_absent(settings_for) -> None:
    settings_for.config_file.parent.mkdir(parents=True)
    settings_for.config_file.write_text("not json")
    assert config.read_config_file(settings_for.config_file) == {}
