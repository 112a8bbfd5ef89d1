"""What a worker remembers between runs, in its cache dir: for each worker name, the id and
token each coordinator gave it, so that a worker restarted on the same machine under the
same name takes its old row back (its ``tasks_done``, its place in ``pilot workers``)
instead of adding one; and the name a worker started without ``--name`` had, so that it
keeps it.

    CACHE_DIR/identity/<name>.json   {"name": ..., "servers": {URL: {"worker_id", "worker_token"}}}
    CACHE_DIR/identity/<name>.lock   held (flock) while a worker of that name runs
    CACHE_DIR/identity/default-name  the name of a worker started without --name

Files are mode 0600 (the token lets its holder act as the worker) and replaced atomically.
A token is sent only to the coordinator that issued it. Two workers of one name sharing a
cache dir would share one row: the lock keeps the second one from using the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IDENTITY_SUBDIR = "identity"  # folder of the cache dir holding these files
DEFAULT_NAME_FILE = "default-name"  # the name of a worker started without --name
FILE_MODE = 0o600  # the token inside is a credential
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")  # usable as a file name


@dataclass(frozen=True)
class Registration:
    """The row a coordinator gave this worker."""

    worker_id: int
    worker_token: str


def identity_dir(cache_dir: Path) -> Path:
    return cache_dir / IDENTITY_SUBDIR


def _file_stem(name: str) -> str:
    if _PLAIN_NAME.match(name):
        return name
    # names with other characters (spaces, slashes, unicode) get a stable hashed stem
    return "name-" + hashlib.sha256(name.encode()).hexdigest()[:32]


def _server_key(server: str) -> str:
    return server.strip().rstrip("/")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class WorkerIdentity:
    """The state file of one worker name in one cache dir; ``acquire`` before use."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        stem = _file_stem(name)
        self.path = folder / f"{stem}.json"
        self._lock_path = folder / f"{stem}.lock"
        self._lock_fd: int | None = None

    def acquire(self) -> bool:
        """Hold this name's lock for as long as the worker runs; False if another process
        holds it (or the folder cannot be written), and then nothing is read or saved."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            log.warning("cannot keep this worker's registration in %s: %s", self.folder, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    @property
    def held(self) -> bool:
        return self._lock_fd is not None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def load(self, server: str) -> Registration | None:
        """The id and token ``server`` gave this name last time, if any."""
        if not self.held:
            return None
        try:
            data = json.loads(self.path.read_text())
            entry = data["servers"][_server_key(server)]
            registration = Registration(int(entry["worker_id"]), str(entry["worker_token"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if not isinstance(exc, KeyError):
                log.warning("ignoring %s: %s", self.path, exc)
            return None
        if registration.worker_id < 1 or not registration.worker_token:
            return None
        return registration

    def save(self, server: str, registration: Registration) -> None:
        """Remember what ``server`` gave this name; a failure is logged, not fatal (the
        next start then registers as a new worker)."""
        if not self.held:
            return
        try:
            data = json.loads(self.path.read_text())
            servers = data.get("servers") if isinstance(data, dict) else None
        except (OSError, ValueError):
            servers = None
        if not isinstance(servers, dict):
            servers = {}
        servers[_server_key(server)] = {"worker_id": registration.worker_id,
                                        "worker_token": registration.worker_token}
        try:
            _write_private(self.path, json.dumps({"name": self.name, "servers": servers},
                                                 indent=1) + "\n")
        except OSError as exc:
            log.warning("cannot save this worker's registration in %s: %s", self.path, exc)


def remembered_name(folder: Path) -> str | None:
    """The name a worker without ``--name`` had last time in this cache dir."""
    try:
        name = (folder / DEFAULT_NAME_FILE).read_text().strip()
    except OSError:
        return None
    return name or None


def remember_name(folder: Path, name: str) -> None:
    try:
        _write_private(folder / DEFAULT_NAME_FILE, name + "\n")
    except OSError as exc:
        log.warning("cannot save this worker's name in %s: %s", folder, exc)
