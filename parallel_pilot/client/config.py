"""Where the client finds its coordinator and token.

Precedence, highest first: explicit ``--server``/``--token`` (or ``Client(server=, token=)``),
then ``PILOT_SERVER``/``PILOT_TOKEN`` (read through ``ClientSettings``), then the config file
that ``pilot login`` writes (mode 0600). A saved token is sent only to the server it was
saved for.

The file is JSON: ``{"server": URL, "token": TOKEN}`` is the last login (the default
server) and ``"other_servers": {URL: TOKEN}`` the logins to other coordinators, kept so
that ``--server`` can name any of them. Files from before ``other_servers`` read the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from parallel_pilot.core.settings import DEFAULT_PORT, ClientSettings
from parallel_pilot.core.urls import normalize_servers
from parallel_pilot.errors import InvalidInput, Unauthorized

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"  # used when nothing names a coordinator
NO_TOKEN_MESSAGE = "no token: pass --token, set PILOT_TOKEN or run pilot login"


@dataclass(frozen=True)
class ClientConfig:
    server: str
    token: str | None


@dataclass(frozen=True)
class SavedLogins:
    """What ``pilot login`` saved: the default server and a token per server."""

    server: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    def token_for(self, server: str) -> str | None:
        return self.tokens.get(server)


def no_token_message(server: str, saved: SavedLogins) -> str:
    """What to do when no token is known for ``server``."""
    if not saved.tokens:
        return f"{NO_TOKEN_MESSAGE} --server {server}"
    return f"not logged in to {server}: run pilot login --server {server}, or pass --token"


def read_config_file(path: Path) -> SavedLogins:
    """The saved logins; none when there is no (readable) file. Entries whose URL is not
    one are skipped."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return SavedLogins()
    if not isinstance(data, dict):
        return SavedLogins()
    pairs: list[tuple[object, object]] = []
    others = data.get("other_servers")
    if isinstance(others, dict):
        pairs += list(others.items())
    pairs.append((data.get("server"), data.get("token")))  # the default wins a clash
    tokens: dict[str, str] = {}
    for url, token in pairs:
        server = _saved_url(url)
        if server is not None and isinstance(token, str) and token:
            tokens[server] = token
    return SavedLogins(server=_saved_url(data.get("server")), tokens=tokens)


def write_config_file(path: Path, server: str, token: str) -> None:
    """Save ``token`` for ``server`` and make it the default, keeping the logins to other
    servers; only the user can read the file (dir 0700, file 0600)."""
    server = normalize_servers(server)
    saved = read_config_file(path)
    others = {url: t for url, t in saved.tokens.items() if url != server}
    data: dict[str, object] = {"server": server, "token": token}
    if others:
        data["other_servers"] = dict(sorted(others.items()))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def resolve(
    server: str | None = None,
    token: str | None = None,
    settings: ClientSettings | None = None,
    *,
    require_token: bool = True,
) -> ClientConfig:
    """Pick server and token by precedence; raise ``InvalidInput`` for a server that is
    not a URL and ``Unauthorized`` when no token is found and one is required."""
    settings = settings if settings is not None else ClientSettings()
    saved = read_config_file(settings.config_file)
    if server:
        final_server = normalize_servers(server, source="--server")
    elif settings.server:
        final_server = normalize_servers(settings.server, source="PILOT_SERVER")
    else:
        final_server = saved.server or DEFAULT_SERVER
    # a saved token goes only to the server it was saved for, never to another one
    final_token = token or settings.token or saved.token_for(final_server)
    if require_token and not final_token:
        raise Unauthorized(no_token_message(final_server, saved))
    return ClientConfig(server=final_server, token=final_token or None)


def _saved_url(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return normalize_servers(value)
    except InvalidInput:
        return None
