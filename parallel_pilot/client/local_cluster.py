"""``LocalCluster``: a coordinator and N workers as child processes on this machine.

It is what ``pilot up`` and ``pilot demo`` run, and what end-to-end tests start:

    with LocalCluster(tmp_path, workers=3) as cluster:
        client = cluster.client()
        ...

Children are real ``pilot server`` / ``pilot worker`` processes (``python -m parallel_pilot``)
listening on 127.0.0.1, each in its own session so that a terminal's Ctrl-C reaches only the
parent, which then stops them in order: workers first (they hand back their tasks), then the
coordinator; SIGTERM, then SIGKILL after a timeout. Their output goes to ``DATA_DIR/logs``.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from parallel_pilot.client.sdk import Client
from parallel_pilot.core.protocol import Health
from parallel_pilot.errors import PilotError, ServerUnavailable
from parallel_pilot.http import Connection

LOCAL_HOST = "127.0.0.1"  # the embedded cluster listens on loopback only
START_TIMEOUT = 60.0  # seconds the coordinator may take to answer /health and write tokens
STOP_TIMEOUT = 20.0  # seconds a child may take to exit after SIGTERM before SIGKILL
HEALTH_POLL = 0.1  # seconds between /health probes while starting
# on your own machine you are the owner: its workers run every kind
LOCAL_WORKER_KINDS = ("render", "sleep", "sweep", "python", "train")
_PR_SET_PDEATHSIG = 1  # prctl option: signal the child when its parent dies


def free_port(host: str = LOCAL_HOST) -> int:
    """A TCP port nobody listens on right now (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_worker_count() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def _parent_death_signal() -> Callable[[], None] | None:
    """Linux only: a pre-exec hook so that a child gets SIGTERM when the thread that started
    it dies (even by SIGKILL), so a crashed `pilot up` or test run leaves no coordinator
    behind. libc is looked up here, in the parent, so the forked child only makes one call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return hook


class LocalCluster:
    """A coordinator on ``127.0.0.1:port`` with ``workers`` local workers of ``slots`` each.

    ``port=0`` picks a free port. ``server_args`` and ``worker_args`` are extra ``pilot
    server`` / ``pilot worker`` flags (e.g. ``["--lease-seconds", "5"]``); ``env`` adds
    environment variables for the children (``self.env`` may be changed before starting
    more of them). Logs: ``log_dir/server.log`` and ``log_dir/worker-<name>.log``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        workers: int | None = None,
        slots: int = 1,
        allow: Sequence[str] = LOCAL_WORKER_KINDS,
        server_args: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        python: str = sys.executable,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.worker_count = default_worker_count() if workers is None else workers
        self.slots = slots
        self.allow = list(allow)
        self.server_args = list(server_args)
        self.worker_args = list(worker_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.url = f"http://{LOCAL_HOST}:{self.port}"
        self.log_dir = self.data_dir / "logs"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.admin_token = ""
        self.join_token = ""
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.env.setdefault("PYTHONUNBUFFERED", "1")

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start the coordinator, wait until it answers, then start the workers."""
        self.start_server()
        for _ in range(self.worker_count):
            self.add_worker()
        return self

    def start_server(self) -> subprocess.Popen[bytes]:
        """Start (or restart) the coordinator on the same data dir and wait until it is up."""
        if self.server is not None and self.server.poll() is None:
            raise RuntimeError("the coordinator is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = ["server", "--host", LOCAL_HOST, "--port", str(self.port),
                "--data-dir", str(self.data_dir), *self.server_args]
        self.server = self._spawn(argv, self.log_dir / "server.log")
        self._wait_until_ready(self.server)
        return self.server

    def add_worker(self, name: str | None = None, *, slots: int | None = None,
                   extra_args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start one more worker process; its join token travels in the environment."""
        if not self.join_token:
            raise RuntimeError("start the coordinator before adding workers")
        index = len(self.workers) + 1
        name = name or f"{socket.gethostname()[:60]}-{index}"
        home = self.data_dir / "workers" / name
        argv = ["worker", "--server", self.url, "--name", name,
                "--slots", str(slots or self.slots), "--allow", ",".join(self.allow),
                "--cache-dir", str(home / "cache"), "--work-dir", str(home / "work"),
                *self.worker_args, *extra_args]
        proc = self._spawn(argv, self.log_dir / f"worker-{name}.log",
                           extra_env={"PILOT_JOIN_TOKEN": self.join_token})
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        """Stop the workers (so they hand back their tasks), then the coordinator."""
        _terminate([w for w in self.workers], self.stop_timeout)
        if self.server is not None:
            _terminate([self.server], self.stop_timeout)

    def stop_server(self, sig: int = signal.SIGTERM) -> None:
        """Stop only the coordinator (``signal.SIGKILL`` to simulate a crash)."""
        if self.server is None:
            return
        if sig == signal.SIGTERM:
            _terminate([self.server], self.stop_timeout)
        else:
            _signal(self.server, sig)
            _wait(self.server, self.stop_timeout)

    def stop_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """Stop one worker (``signal.SIGKILL`` to simulate a machine that vanished)."""
        if sig == signal.SIGTERM:
            _terminate([proc], self.stop_timeout)
        else:
            _signal(proc, sig)
            _wait(proc, self.stop_timeout)

    def dead_children(self) -> list[str]:
        """Names of children that have exited, with their exit codes."""
        out = []
        if self.server is not None and self.server.poll() is not None:
            out.append(f"coordinator (exit {self.server.returncode})")
        for i, worker in enumerate(self.workers, 1):
            if worker.poll() is not None:
                out.append(f"worker {i} (exit {worker.returncode})")
        return out

    def client(self) -> Client:
        """A ``Client`` for this cluster's admin user."""
        return Client(self.url, self.admin_token)

    # ------------------------------------------------------------ helpers

    def _spawn(self, argv: list[str], log: Path,
               extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(self.env)
        env.update(extra_env or {})
        with open(log, "ab") as out:
            return subprocess.Popen(
                [self.python, "-m", "parallel_pilot", *argv], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )

    def _wait_until_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        admin_file = self.data_dir / "admin-token"
        join_file = self.data_dir / "join-token"
        with Connection(self.url, retry_seconds=0) as conn:
            while True:
                if proc.poll() is not None:
                    raise ServerUnavailable(
                        f"the coordinator exited with code {proc.returncode} while starting; "
                        f"see {self.log_dir / 'server.log'}\n{self._log_tail('server.log')}"
                    )
                if self._answers(conn) and admin_file.is_file() and join_file.is_file():
                    self.admin_token = admin_file.read_text().strip()
                    self.join_token = join_file.read_text().strip()
                    if self.admin_token and self.join_token:
                        return
                if time.monotonic() >= deadline:
                    raise ServerUnavailable(
                        f"the coordinator did not answer on {self.url} within "
                        f"{self.start_timeout:g} s; see {self.log_dir / 'server.log'}"
                    )
                time.sleep(HEALTH_POLL)

    @staticmethod
    def _answers(conn: Connection) -> bool:
        try:
            return bool(conn.call("GET", "/health", Health, retry=False, timeout=2.0).ok)
        except (PilotError, httpx.HTTPError):  # a read timeout is not mapped by Connection
            return False

    def _log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.log_dir / name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout=max(0.0, timeout))
        return True
    except subprocess.TimeoutExpired:
        return False


def _terminate(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM all at once, wait up to ``timeout`` in total, then SIGKILL the rest."""
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        if not _wait(proc, deadline - time.monotonic()):
            _signal(proc, signal.SIGKILL)
            _wait(proc, 5.0)
