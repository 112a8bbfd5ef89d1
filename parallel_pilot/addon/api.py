"""The coordinator's user API as the add-on speaks it: urllib only (Blender's Python has
no httpx), JSON in and out, blobs streamed from disk. Safe to call from any thread: it
never touches ``bpy``.

Every failure is an ``ApiError`` whose message is the coordinator's own (its
``{"error", "message"}`` body) or says why the coordinator could not be reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

API_PREFIX = "/api/v1"
DEFAULT_SERVER = "http://127.0.0.1:8330"
TIMEOUT_SECONDS = 30.0  # one request, uploads included (per socket operation)
UPLOAD_BLOCK_BYTES = 1024 * 1024  # bytes moved per read or write of a blob
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class ApiError(Exception):
    """A refused or failed call: ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def normalise_server(server: str) -> str:
    """``host:8330`` or ``http://host:8330/`` -> ``http://host:8330`` (no trailing slash)."""
    server = server.strip()
    if not server:
        raise ApiError("set the coordinator's address in the add-on's preferences "
                       "(Edit > Preferences > Add-ons > Parallel Pilot)")
    if "://" not in server:
        server = "http://" + server
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(f"{server!r} is not an http(s) address of a coordinator")
    return server.rstrip("/")


def is_loopback(server: str) -> bool:
    host = urllib.parse.urlsplit(normalise_server(server)).hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def job_page(server: str, job_id: int) -> str:
    """The job's page in the coordinator's dashboard."""
    return f"{normalise_server(server)}/jobs/{job_id}"


class _CountingReader:
    """A file that tells ``on_bytes`` how much of it was read (sent)."""

    def __init__(self, path: str, on_bytes: Callable[[int], None] | None) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by put_blob
        self._on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(UPLOAD_BLOCK_BYTES if size is None or size < 0 else size)
        if chunk and self._on_bytes is not None:
            self._on_bytes(len(chunk))
        return chunk

    def close(self) -> None:
        self._file.close()


class Api:
    """One coordinator and one user's API token."""

    def __init__(self, server: str, token: str, *, timeout: float = TIMEOUT_SECONDS) -> None:
        self.server = normalise_server(server)
        if not token.strip():
            raise ApiError("set your API token in the add-on's preferences (make one with "
                           "`pilot tokens create` or on the dashboard's Account page)")
        self.token = token.strip()
        self.timeout = timeout

    def _open(self, method: str, path: str, *, body: object = None,
              headers: dict[str, str] | None = None):
        url = self.server + API_PREFIX + path
        request = urllib.request.Request(url, data=body, method=method)  # type: ignore[arg-type]
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _refusal(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach the coordinator at {self.server}: {reason}") from None

    def call(self, method: str, path: str, payload: object = None) -> dict:
        """A JSON call; the decoded answer."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        with self._open(method, path, body=body, headers=headers) as response:
            raw = response.read()
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise ApiError(f"the coordinator at {self.server} answered {path} with "
                           "something that is not JSON") from None

    # ------------------------------------------------------------ calls

    def me(self) -> dict:
        """Who the token belongs to (checks server and token before any upload)."""
        return self.call("GET", "/me")

    def has_blob(self, sha256: str) -> bool:
        """Whether the coordinator has these bytes and this user may read them."""
        try:
            with self._open("HEAD", f"/blobs/{sha256}"):
                return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def put_blob(self, path: str, sha256: str,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        """Stream the file at ``path`` as the blob ``sha256`` (the coordinator checks it)."""
        reader = _CountingReader(path, on_bytes)
        try:
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Length": str(os.path.getsize(path))}
            with self._open("PUT", f"/blobs/{sha256}", body=reader, headers=headers) as r:
                r.read()
        finally:
            reader.close()

    def get_blob(self, sha256: str, dest: str,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        """Stream the blob ``sha256`` into the file ``dest`` (through ``dest.part``,
        checking its hash, so that a broken download leaves no file)."""
        partial = dest + ".part"
        digest = hashlib.sha256()
        with self._open("GET", f"/blobs/{sha256}") as response, open(partial, "wb") as out:
            while chunk := response.read(UPLOAD_BLOCK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        if digest.hexdigest() != sha256:
            os.remove(partial)
            raise ApiError(f"the download of {os.path.basename(dest)} was damaged "
                           "(its SHA-256 differs); try again")
        os.replace(partial, dest)

    def submit(self, kind: str, params: dict, *, name: str | None = None,
               priority: int = 0) -> dict:
        """Submit a job; its ``JobInfo``."""
        return self.call("POST", "/jobs", {"kind": kind, "params": params, "name": name,
                                           "priority": priority})

    def job(self, job_id: int) -> dict:
        return self.call("GET", f"/jobs/{job_id}")

    def outputs(self, job_id: int) -> list[dict]:
        return list(self.call("GET", f"/jobs/{job_id}/outputs").get("outputs") or [])


def _refusal(exc: urllib.error.HTTPError) -> ApiError:
    """The coordinator's ``{"error", "message"}`` as an ``ApiError``."""
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    if not message and exc.code == 401:
        message = "the coordinator refused the API token (check it in the preferences)"
    if not message and isinstance(body, dict) and isinstance(body.get("detail"), str):
        message = body["detail"]
    return ApiError(str(message or f"the coordinator answered {exc.code} {exc.reason}"),
                    status=exc.code, code=str(body.get("error", "")) if isinstance(body, dict)
                    else "")
