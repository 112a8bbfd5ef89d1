"""``LocalCluster``: a coordinator and N workers as child processes on this machine.

It is what ``pilot up`` and ``pilot demo`` run, and what end-to-end tests start:

    with LocalCluster(tmp_path, workers=3) as cluster:
        client = cluster.client()
        ...

Children are real ``pilot server`` / ``pilot worker`` processes (``python -m parallel_pilot``)
listening on 127.0.0.1, each in its own session so that a terminal's Ctrl-C reaches only the
parent, which then stops them in order: workers first (they hand back their tasks), then the
coordinator; SIGTERM, then SIGKILL after a timeout. Their output goes to ``DATA_DIR/logs``.

A port in use is refused before anything starts (``CannotListen``), and the readiness check
only accepts the coordinator it started: each start passes a fresh instance id that
``GET /health`` sends back in a header, so another coordinator on the same port never
passes for this one. ``stop(hurry_on_signal=True)`` (``pilot up``) lets a second Ctrl-C
cut the orderly stop short, bounded in time.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import ClassVar, Protocol

import httpx
import psutil

from parallel_pilot.client.sdk import Client
from parallel_pilot.core.folders import private_dir
from parallel_pilot.core.protocol import API_PREFIX
from parallel_pilot.errors import CannotListen, ServerUnavailable

LOCAL_HOST = "127.0.0.1"  # the embedded cluster listens on loopback only
START_TIMEOUT = 60.0  # seconds the coordinator may take to answer /health and write tokens
STOP_TIMEOUT = 20.0  # seconds a child may take to exit after SIGTERM before SIGKILL
HEALTH_POLL = 0.1  # seconds between /health probes while starting
HEALTH_TIMEOUT = 2.0  # seconds one /health probe may take
STOP_POLL = 0.05  # seconds between checks while children stop
HURRY_WORKER_SECONDS = 6.0  # after a second signal: seconds workers get to hand their tasks
# back and kill their task processes (about 1 s; their own bound is 5 s) before SIGKILL
HURRY_SERVER_SECONDS = 3.0  # after a second signal: seconds the coordinator gets to exit
KILL_WAIT_SECONDS = 5.0  # seconds to wait for a child after SIGKILL
INSTANCE_HEADER = "X-Pilot-Instance"  # GET /health names the coordinator process by it
# on your own machine you are the owner: its workers run every kind
LOCAL_WORKER_KINDS = ("render", "sleep", "sweep", "python", "train")
_PR_SET_PDEATHSIG = 1  # prctl option: signal the child when its parent dies


def port_in_use(port: int, host: str = LOCAL_HOST) -> bool:
    """Whether something listens on ``host:port`` (bound the way the coordinator binds,
    SO_REUSEADDR, so a port merely left in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


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


class Child(Protocol):
    """A started ``pilot`` process: what of ``subprocess.Popen`` the cluster uses."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


# starts `pilot ARGV...` writing to LOG with exactly ENV, in a session of its own that gets
# SIGTERM when its parent dies
Spawner = Callable[[list[str], Path, dict[str, str]], Child]


class LocalCluster:
    """A coordinator on ``127.0.0.1:port`` with ``workers`` local workers of ``slots`` each.

    ``port=0`` picks a free port. ``server_args`` and ``worker_args`` are extra ``pilot
    server`` / ``pilot worker`` flags (e.g. ``["--lease-seconds", "5"]``); ``env`` adds
    environment variables for the children (``self.env`` may be changed before starting
    more of them). Logs: ``log_dir/server.log`` and ``log_dir/worker-<name>.log``.

    ``spawner`` starts the children (``None``: ``python -m parallel_pilot`` through
    ``subprocess``); the test suite sets one that forks them from a warm interpreter.
    """

    spawner: ClassVar[Spawner | None] = None

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
        self.server: Child | None = None
        self.workers: list[Child] = []
        self.admin_token = ""
        self.join_token = ""
        self.instance_id = ""  # of the coordinator process started last
        self._hurry_signals = 0  # SIGINT/SIGTERM received during stop(hurry_on_signal=True)
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

    def check_port(self) -> None:
        """Raise ``CannotListen`` (one line naming the port and ``--port``) if something
        listens on the cluster's port already."""
        if port_in_use(self.port):
            raise CannotListen(self._port_in_use_message())

    def _port_in_use_message(self) -> str:
        return (f"port {self.port} on {LOCAL_HOST} is in use (another coordinator or "
                f"program listens there); stop it or choose another port with --port")

    def start_server(self) -> Child:
        """Start (or restart) the coordinator on the same data dir and wait until it is up."""
        if self.server is not None and self.server.poll() is None:
            raise RuntimeError("the coordinator is already running")
        self.check_port()
        private_dir(self.data_dir)
        self.instance_id = secrets.token_hex(8)
        argv = ["server", "--host", LOCAL_HOST, "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--instance-id", self.instance_id,
                *self.server_args]
        self.server = self._spawn(argv, self.log_dir / "server.log")
        self._wait_until_ready(self.server)
        return self.server

    def add_worker(self, name: str | None = None, *, slots: int | None = None,
                   extra_args: Sequence[str] = ()) -> Child:
        """Start one more worker process; its join token travels in the environment."""
        argv, log, env = self.worker_spec(name, slots=slots, extra_args=extra_args)
        proc = self._spawn(argv, log, extra_env=env)
        self.workers.append(proc)
        return proc

    def worker_spec(self, name: str | None = None, *, slots: int | None = None,
                    extra_args: Sequence[str] = ()) -> tuple[list[str], Path, dict[str, str]]:
        """The next worker's ``pilot`` arguments, log file and environment."""
        if not self.join_token:
            raise RuntimeError("start the coordinator before adding workers")
        index = len(self.workers) + 1
        name = name or f"{socket.gethostname()[:60]}-{index}"
        home = self.data_dir / "workers" / name
        argv = ["worker", "--server", self.url, "--name", name,
                "--slots", str(slots or self.slots), "--allow", ",".join(self.allow),
                "--cache-dir", str(home / "cache"), "--work-dir", str(home / "work"),
                *self.worker_args, *extra_args]
        env = {**self.env, "PILOT_JOIN_TOKEN": self.join_token}
        return argv, self.log_dir / f"worker-{name}.log", env

    def stop(self, *, hurry_on_signal: bool = False,
             on_hurry: Callable[[], None] | None = None) -> None:
        """Stop the workers (so they hand back their tasks), then the coordinator.

        With ``hurry_on_signal`` (in the main thread), a SIGINT or SIGTERM that arrives
        meanwhile cuts the stop short: ``on_hurry`` is called, the workers get a second
        SIGTERM (they hand running tasks back at once instead of letting them finish), the
        coordinator follows as soon as they are gone, and whatever still runs after
        ``HURRY_WORKER_SECONDS`` and ``HURRY_SERVER_SECONDS`` is killed with its children.
        """
        catch = hurry_on_signal and threading.current_thread() is threading.main_thread()
        previous: dict[int, object] = {}
        self._hurry_signals = 0
        if catch:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._count_hurry)
        hurry = _Hurry(lambda: self._hurry_signals > 0, on_hurry)
        try:
            self._stop_group(self.workers, self.stop_timeout, HURRY_WORKER_SECONDS, hurry)
            if self.server is not None:
                self._stop_group([self.server], self.stop_timeout, HURRY_SERVER_SECONDS,
                                 hurry)
        finally:
            for caught, handler in previous.items():
                signal.signal(caught, handler)  # type: ignore[arg-type]

    def _count_hurry(self, signum: int, frame: FrameType | None) -> None:
        # a signal handler only counts: it must not take locks the main thread may hold
        self._hurry_signals += 1

    @staticmethod
    def _stop_group(procs: Sequence[Child], timeout: float,
                    hurry_timeout: float, hurry: _Hurry) -> None:
        """SIGTERM ``procs``; once hurried, SIGTERM them again and wait at most
        ``hurry_timeout`` more; past the deadline, SIGKILL them and their children."""
        alive = [p for p in procs if p.poll() is None]
        for proc in alive:
            _signal(proc, signal.SIGTERM)
        now = time.monotonic()
        deadline = now + (hurry_timeout if hurry.noticed else timeout)
        while alive:
            now = time.monotonic()
            if hurry.now():
                for proc in alive:
                    _signal(proc, signal.SIGTERM)  # a worker's second signal: stop now
                deadline = min(deadline, now + hurry_timeout)
            if now >= deadline:
                for proc in alive:
                    _kill_tree(proc)
                for proc in alive:
                    _wait(proc, KILL_WAIT_SECONDS)
                return
            time.sleep(STOP_POLL)
            alive = [p for p in alive if p.poll() is None]

    def stop_server(self, sig: int = signal.SIGTERM) -> None:
        """Stop only the coordinator (``signal.SIGKILL`` to simulate a crash)."""
        if self.server is None:
            return
        if sig == signal.SIGTERM:
            _terminate([self.server], self.stop_timeout)
        else:
            _signal(self.server, sig)
            _wait(self.server, self.stop_timeout)

    def stop_worker(self, proc: Child, sig: int = signal.SIGTERM) -> None:
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
               extra_env: Mapping[str, str] | None = None) -> Child:
        private_dir(log.parent)  # logs name the tokens' files and the jobs' output
        env = dict(self.env)
        env.update(extra_env or {})
        spawner = type(self).spawner  # the class's: a function there is not bound to self
        if spawner is not None:
            return spawner(argv, log, env)
        with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
            return subprocess.Popen(
                [self.python, "-m", "parallel_pilot", *argv], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )

    def _wait_until_ready(self, proc: Child) -> None:
        deadline = time.monotonic() + self.start_timeout
        admin_file = self.data_dir / "admin-token"
        join_file = self.data_dir / "join-token"
        with httpx.Client(base_url=self.url + API_PREFIX, timeout=HEALTH_TIMEOUT) as http:
            while True:
                if proc.poll() is not None:
                    self._exited_while_starting(proc)
                if self._answers(http) and admin_file.is_file() and join_file.is_file():
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

    def _exited_while_starting(self, proc: Child) -> None:
        tail = self._log_tail("server.log")
        if proc.returncode == 2 and "in use" in tail:
            # taken between our check and the child's bind: the child said so and left
            raise CannotListen(self._port_in_use_message())
        raise ServerUnavailable(
            f"the coordinator exited with code {proc.returncode} while starting; "
            f"see {self.log_dir / 'server.log'}\n{tail}")

    def _answers(self, http: httpx.Client) -> bool:
        """Whether the coordinator this cluster started answers (not another one)."""
        try:
            response = http.get("/health")
        except httpx.HTTPError:
            return False
        return (response.status_code == 200
                and response.headers.get(INSTANCE_HEADER) == self.instance_id)

    def _log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.log_dir / name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class _Hurry:
    """Whether a stop was asked to hurry, noticed once (``on_hurry`` runs then, in the
    stopping thread, not in a signal handler)."""

    def __init__(self, asked: Callable[[], bool], on_hurry: Callable[[], None] | None) -> None:
        self.asked = asked
        self.on_hurry = on_hurry
        self.noticed = False

    def now(self) -> bool:
        """True the first time the hurry is seen."""
        if self.noticed or not self.asked():
            return False
        self.noticed = True
        if self.on_hurry is not None:
            self.on_hurry()
        return True


def _signal(proc: Child, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def _wait(proc: Child, timeout: float) -> bool:
    try:
        proc.wait(timeout=max(0.0, timeout))
        return True
    except subprocess.TimeoutExpired:
        return False


def _kill_tree(proc: Child) -> None:
    """SIGKILL a child and everything it started (task processes live in sessions of
    their own, so killing the child's process group would miss them)."""
    if proc.poll() is not None:
        return
    try:
        below = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        below = []
    _signal(proc, signal.SIGKILL)
    for child in below:
        with contextlib.suppress(psutil.Error):
            child.kill()  # psutil checks it is still the process it listed (no pid reuse)


def _terminate(procs: list[Child], timeout: float) -> None:
    """SIGTERM all at once, wait up to ``timeout`` in total, then SIGKILL the rest."""
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        if not _wait(proc, deadline - time.monotonic()):
            _signal(proc, signal.SIGKILL)
            _wait(proc, 5.0)
