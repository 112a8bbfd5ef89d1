"""Throwaway servers the benchmarks start and stop by pid: Redis (Celery's broker and
result backend, from Debian's ``redis-server``) and PostgreSQL 15 (the test suite's own
``tests/dbservers.py``, imported, not copied)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
REDIS_READY_TIMEOUT = 15.0  # seconds redis-server may take to accept connections
STOP_TIMEOUT = 10.0  # seconds a server may take to exit after SIGTERM before SIGKILL


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Terminate one process we started, by its pid; kill it if it does not exit."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def redis_unavailable() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server not found (Debian package redis-server: scripts/install-bench-deps.sh)"
    return None


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A ``redis-server`` on a free 127.0.0.1 port without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(redis_unavailable())
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", tmp, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + REDIS_READY_TIMEOUT
            while not _answers_ping(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer on port {port}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(proc)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@functools.cache
def _dbservers() -> Any:
    """tests/dbservers.py of this checkout, loaded by its path (the bench may run with
    another checkout's parallel_pilot and tests first on PYTHONPATH)."""
    path = ROOT / "tests" / "dbservers.py"
    spec = importlib.util.spec_from_file_location("_bench_dbservers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def postgres_unavailable() -> str | None:
    return _dbservers().unavailable_reason("postgres")  # type: ignore[no-any-return]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL 15 server started from its binaries (as the test suite does); yields a
    SQLAlchemy URL of an empty database on it."""
    server = _dbservers().start_postgres()
    try:
        yield server.url
    finally:
        server.stop()


def child_code_warning() -> str | None:
    """``LocalCluster`` starts ``python -m parallel_pilot`` children, which import the
    package from their working directory first: say so when that is not the package this
    process imported (run the bench from the checkout it measures)."""
    import parallel_pilot

    imported = Path(parallel_pilot.__file__).resolve().parent
    local = Path.cwd() / "parallel_pilot"
    if local.is_dir() and local.resolve() != imported:
        return (f"the coordinator and workers would import {local.resolve()}, not {imported}:"
                f" run from {imported.parent}")
    return None


@contextlib.contextmanager
def postgres_databases() -> Iterator[Callable[[str], str]]:
    """A PostgreSQL 15 server started from its binaries (as the test suite does); yields a
    function that creates an empty database of the given name on it and returns its URL
    (a benchmark making one database per run)."""
    server = _dbservers().start_postgres()
    try:
        yield server.create_database
    finally:
        server.stop()
