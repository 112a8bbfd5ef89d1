"""Where the client finds its coordinator and token.

Precedence, highest first: explicit ``--server``/``--token`` (or ``Client(server=, token=)``),
then ``PILOT_SERVER``/``PILOT_TOKEN`` (read through ``ClientSettings``), then the config file
that ``pilot login`` writes (JSON ``{"server": ..., "token": ...}``, mode 0600). A saved
token is sent only to the server it was saved with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from parallel_pilot.core.settings import DEFAULT_PORT, ClientSettings
from parallel_pilot.errors import Unauthorized

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"  # used when nothing names a coordinator
NO_TOKEN_MESSAGE = "no token: pass --token, set PILOT_TOKEN or run pilot login"


@dataclass(frozen=True)
class ClientConfig:
    server: str
    token: str | None


def read_config_file(path: Path) -> dict[str, str]:
    """The saved server and token, or an empty dict when there is no (readable) file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in ("server", "token") and isinstance(v, str)}


def write_config_file(path: Path, server: str, token: str) -> None:
    """Save server and token where only the user can read them (dir 0700, file 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"server": server, "token": token}, f, indent=2)
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
    """Pick server and token by precedence; raise ``Unauthorized`` when no token is found
    and one is required."""
    settings = settings if settings is not None else ClientSettings()
    saved = read_config_file(settings.config_file)
    final_server = server or settings.server or saved.get("server") or DEFAULT_SERVER
    final_server = final_server.rstrip("/")
    final_token = token or settings.token
    # a saved token goes only to the server it was saved for, never to another one
    if not final_token and saved.get("server", final_server).rstrip("/") == final_server:
        final_token = saved.get("token")
    if require_token and not final_token:
        raise Unauthorized(NO_TOKEN_MESSAGE)
    return ClientConfig(server=final_server, token=final_token or None)
