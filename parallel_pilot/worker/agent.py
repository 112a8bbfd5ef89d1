"""The worker agent: register, lease tasks while slots are free, run each in its own thread,
and leave cleanly on a signal (drain, then hand back what is still running).

Threads: the caller's thread runs ``Worker.run()`` and only waits for a stop and then shuts
down; a daemon *lease loop* registers and long-polls for tasks (it is abandoned on stop, so
a 30-second long poll never delays shutdown); each task has a ``TaskRun`` thread and a
heartbeat thread. A restarting coordinator is waited for with bounded back-off, never fatal.
A worker restarted under the same name with the same cache dir sends the id and token it was
given (``worker/identity.py``) and so takes its old row back.
"""

from __future__ import annotations

import logging
import secrets
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from parallel_pilot.core.protocol import Capabilities, LeaseRequest, RegisterRequest, TaskLease
from parallel_pilot.core.settings import DEFAULT_LEASE_SECONDS, WorkerSettings
from parallel_pilot.errors import (
    Forbidden,
    InvalidInput,
    PilotError,
    ServerUnavailable,
    Unauthorized,
)
from parallel_pilot.http import Connection
from parallel_pilot.kinds import check_allowed_kinds
from parallel_pilot.kinds.render.blender import installed_blender, use_blender
from parallel_pilot.kinds.render.sandbox import (
    RenderSandboxDecision,
    private_folders,
    render_sandbox_decision,
)
from parallel_pilot.kinds.sandbox import sandbox_unavailable_reason
from parallel_pilot.worker.cache import BlobCache
from parallel_pilot.worker.capabilities import detect_capabilities
from parallel_pilot.worker.context import StopReason
from parallel_pilot.worker.identity import (
    Registration,
    WorkerIdentity,
    identity_dir,
    remember_name,
    remembered_name,
)
from parallel_pilot.worker.link import CoordinatorLink
from parallel_pilot.worker.task_run import TaskRun

LEASE_WAIT_SECONDS = 30.0  # seconds one lease request waits on the coordinator for tasks
LEASE_IDLE_SECONDS = 0.5  # seconds to pause after an empty answer that came back at once
MAX_LEASE_SLOTS = 64  # slots one lease request may ask for (the wire's limit)
LOOP_RETRY_SECONDS = 5.0  # seconds one register/lease call retries before the loop backs off
BACKOFF_START_SECONDS = 1.0  # first pause after a failed call to the coordinator
BACKOFF_MAX_SECONDS = 30.0  # longest pause between tries while the coordinator is away
STOP_GRACE_SECONDS = 10.0  # seconds stopped tasks get to wind down and release themselves
HARD_STOP_JOIN_SECONDS = 5.0  # seconds after a second signal for tasks to kill children
WAIT_TICK_SECONDS = 0.2  # how often waits in the main thread look at received signals
CACHE_SUBDIR = Path(".cache") / "parallel-pilot" / "blobs"  # under the home directory
NAME_MAX = 100  # characters of a worker name (the wire's limit)

ConnectionFactory = Callable[[str], Connection]

log = logging.getLogger(__name__)


def default_name() -> str:
    """``hostname-1a2b``: the host, and a short random part so two workers differ."""
    suffix = secrets.token_hex(2)
    host = socket.gethostname().split(".")[0] or "worker"
    return f"{host[: NAME_MAX - len(suffix) - 1]}-{suffix}"


class Worker:
    """One worker process's agent. ``run()`` blocks until stopped and returns an exit code."""

    def __init__(self, settings: WorkerSettings, *,
                 connection_factory: ConnectionFactory | None = None,
                 capabilities: Capabilities | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_allowed_kinds(settings.allow)
        if settings.sandbox:
            reason = sandbox_unavailable_reason()
            if reason is not None:
                raise InvalidInput(f"--sandbox: {reason}")
        if not settings.join_token:
            raise InvalidInput("a join token is required to register (--join-token)")
        self.settings = settings
        cache_dir = settings.cache_dir or Path.home() / CACHE_SUBDIR
        self.identity, self._identity_note = _claim_identity(settings.name, cache_dir)
        self.name = self.identity.name
        self.clock = clock
        factory = connection_factory or (lambda server: Connection(server))
        self.link = CoordinatorLink(factory(settings.server))
        # register and lease calls get their own connection: abandoned on shutdown while a
        # long poll waits, and quick to give up so the loop logs and backs off on its own
        lease_connection = factory(settings.server)
        lease_connection.retry_seconds = min(lease_connection.retry_seconds,
                                             LOOP_RETRY_SECONDS)
        self.lease_link = CoordinatorLink(lease_connection)
        self.cache = BlobCache(cache_dir, settings.cache_bytes)
        # what a sandboxed task must not see of this worker: its home, cache, work root
        self.private_paths = private_folders(Path.home(), cache_dir, settings.work_dir)
        if settings.blender:
            use_blender(settings.blender)
        self.render_sandbox = self._decide_render_sandbox()
        self._capabilities = capabilities
        self.worker_id: int | None = None
        self.lease_seconds = DEFAULT_LEASE_SECONDS
        self.registered = threading.Event()
        self.outcomes: Counter[str] = Counter()  # finished attempts by outcome
        self.fatal: PilotError | None = None
        self._stopping = threading.Event()
        self._hard_stop = threading.Event()
        self._slots = threading.Condition()  # guards _running; notified when it changes
        self._running: dict[tuple[int, int], TaskRun] = {}
        self._signals = 0  # SIGTERM/SIGINT received, counted by on_signal
        self._lease_thread: threading.Thread | None = None

    # ------------------------------------------------------------ public

    @property
    def running(self) -> list[TaskRun]:
        with self._slots:
            return list(self._running.values())

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self, hard: bool = False) -> None:
        """Stop leasing and shut down; ``hard`` hands running tasks back at once."""
        if hard:
            self._hard_stop.set()
        self._stopping.set()
        with self._slots:
            self._slots.notify_all()

    def run(self) -> int:
        """Register, work until stopped, shut down; 0 after a clean stop, 2 when the
        coordinator refused this worker (bad join token, revoked)."""
        if self._identity_note:
            log.warning("%s", self._identity_note)
        if "render" in self.settings.allow:
            if self.render_sandbox.enabled:
                log.info("renders run in a sandbox (bwrap: no network, read-only system, "
                         "only the task folder writable)")
            else:
                log.warning("renders run without a sandbox: %s", self.render_sandbox.reason)
        self._lease_thread = threading.Thread(target=self._lease_loop, name="lease-loop",
                                              daemon=True)
        self._lease_thread.start()
        while not self._stopping.wait(WAIT_TICK_SECONDS):
            self._poll_signals()
        self._shutdown()
        return 2 if self.fatal is not None else 0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: only counts, since a handler must not take locks the
        interrupted main thread may hold; the main thread's waits act on the count."""
        self._signals += 1
        if self._signals >= 2:
            # a third signal should kill us even if shutdown hangs
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                          else signal.SIG_DFL)

    # ------------------------------------------------------------ lease loop

    def _lease_loop(self) -> None:
        try:
            if not self._register():
                return
            delay = BACKOFF_START_SECONDS
            while not self._stopping.is_set():
                free = self._wait_for_free_slot()
                if free <= 0:
                    break
                try:
                    self._lease_once(free)
                    if delay > BACKOFF_START_SECONDS:
                        log.info("the coordinator answers again")
                    delay = BACKOFF_START_SECONDS
                except Unauthorized as exc:
                    log.warning("coordinator no longer knows this worker (%s); registering again",
                                exc)
                    if not self._register():
                        return
                except Forbidden as exc:
                    self._fail_fatally(f"the coordinator refuses this worker: {exc}")
                    return
                except Exception as exc:  # the loop must survive anything the coordinator does
                    self._log_trouble("cannot lease tasks", exc, delay)
                    self._stopping.wait(delay)
                    delay = min(delay * 2, BACKOFF_MAX_SECONDS)
        except Exception:
            log.exception("lease loop crashed; stopping")
            self.request_stop()

    def _lease_once(self, free: int) -> None:
        asked = self.clock()
        answer = self.lease_link.lease(
            LeaseRequest(slots=min(free, MAX_LEASE_SLOTS), wait_seconds=LEASE_WAIT_SECONDS))
        leased_at = self.clock()
        for lease in answer.tasks:
            self._start(lease, leased_at)
        if not answer.tasks and leased_at - asked < LEASE_IDLE_SECONDS:
            self._stopping.wait(LEASE_IDLE_SECONDS)  # no long poll: do not spin

    def _decide_render_sandbox(self) -> RenderSandboxDecision:
        """Whether Blender runs in bwrap here: probed once, at start."""
        if "render" not in self.settings.allow:
            return RenderSandboxDecision(False, "this worker does not render")
        return render_sandbox_decision(self.settings.render_sandbox, installed_blender(),
                                       self.private_paths)

    def _register(self) -> bool:
        capabilities = self._capabilities or detect_capabilities(
            self.settings, render_sandbox=self.render_sandbox.enabled)
        self._capabilities = capabilities
        # the id and token this name had here before: the coordinator gives the old row
        # back if the token still matches it, else a new row
        before = self.identity.load(self.link.server)
        request = RegisterRequest(join_token=self.settings.join_token, name=self.name,
                                  capabilities=capabilities,
                                  worker_id=before.worker_id if before else None,
                                  worker_token=before.worker_token if before else None)
        delay = BACKOFF_START_SECONDS
        while not self._stopping.is_set():
            try:
                answer = self.lease_link.register(request)
            except (Unauthorized, Forbidden, InvalidInput) as exc:
                self._fail_fatally(f"the coordinator refused to register this worker: {exc}")
                return False
            except Exception as exc:
                self._log_trouble("cannot register", exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)
                continue
            for link in (self.link, self.lease_link):
                link.set_token(answer.worker_token)
            self.identity.save(self.link.server,
                               Registration(answer.worker_id, answer.worker_token))
            self.worker_id = answer.worker_id
            self.lease_seconds = answer.lease_seconds
            self.registered.set()
            again = before is not None and before.worker_id == answer.worker_id
            log.info("registered with %s as worker %d%s (%d slot(s), kinds: %s)",
                     self.link.server, answer.worker_id, " again" if again else "",
                     self.settings.slots, ", ".join(self.settings.allow))
            return True
        return False

    def _wait_for_free_slot(self) -> int:
        with self._slots:
            while not self._stopping.is_set() and len(self._running) >= self.settings.slots:
                self._slots.wait()
            return 0 if self._stopping.is_set() else self.settings.slots - len(self._running)

    def _start(self, lease: TaskLease, leased_at: float) -> None:
        run = TaskRun(lease, link=self.link, cache=self.cache, allowed=self.settings.allow,
                      lease_seconds=self.lease_seconds, leased_at=leased_at,
                      work_root=self.settings.work_dir, on_finished=self._finished,
                      hard_stop=self._hard_stop, sandbox=self.settings.sandbox,
                      render_sandbox=self.render_sandbox.enabled,
                      private_paths=self.private_paths, clock=self.clock)
        with self._slots:
            late = self._stopping.is_set()
            if not late:
                self._running[(lease.task_id, lease.attempt)] = run
        if late:
            # leased by a call that answered after the stop: give it straight back
            if run.claim():
                run.release()
            return
        log.info("%s started (attempt %d)", run.label, lease.attempt)
        run.start()

    def _finished(self, run: TaskRun) -> None:
        with self._slots:
            self._running.pop((run.lease.task_id, run.lease.attempt), None)
            self.outcomes[run.outcome or "dropped"] += 1
            self._slots.notify_all()

    # ------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        running = self.running
        if running and not self._hard_stop.is_set():
            log.info("stopping: letting %d running task(s) finish (up to %.0f s; "
                     "signal again to stop now)", len(running), self.settings.drain_seconds)
        elif not running:
            log.info("stopping")
        self._wait_idle(self.settings.drain_seconds, interruptible=True)
        for run in self.running:
            run.stop(StopReason.SHUTDOWN, "the worker is stopping")
        if not self._hard_stop.is_set():
            self._wait_idle(STOP_GRACE_SECONDS, interruptible=True)
        for run in self.running:
            if run.claim():
                run.release()
        # let stopped tasks kill their child processes before the process ends
        self._wait_idle(HARD_STOP_JOIN_SECONDS, interruptible=False)
        if self.registered.is_set():
            try:
                self.link.leave()
                log.info("left the coordinator")
            except Exception as exc:
                log.warning("could not tell the coordinator that this worker leaves: %s", exc)
        self.link.close()
        if self._lease_thread is not None:
            self._lease_thread.join(timeout=0)
            if not self._lease_thread.is_alive():
                self.lease_link.close()
        self.identity.release()

    def _wait_idle(self, seconds: float, *, interruptible: bool) -> None:
        """Wait until no task runs, ``seconds`` pass, or (if interruptible) a hard stop."""
        deadline = self.clock() + seconds
        with self._slots:
            while self._running:
                self._poll_signals()
                if interruptible and self._hard_stop.is_set():
                    return
                left = deadline - self.clock()
                if left <= 0:
                    return
                self._slots.wait(min(left, WAIT_TICK_SECONDS))

    def _poll_signals(self) -> None:
        if self._signals >= 2 and not self._hard_stop.is_set():
            log.info("second signal: handing running tasks back now")
            self.request_stop(hard=True)
        elif self._signals >= 1 and not self._stopping.is_set():
            self.request_stop()

    # ------------------------------------------------------------ helpers

    def _fail_fatally(self, message: str) -> None:
        log.error("%s", message)
        self.fatal = PilotError(message)
        self.request_stop()

    def _log_trouble(self, what: str, exc: Exception, delay: float) -> None:
        if isinstance(exc, ServerUnavailable):
            # quiet while the coordinator restarts: one line per try is enough
            log.warning("%s: %s (retrying in %.0f s)", what, exc, delay)
        else:
            log.warning("%s: %s: %s (retrying in %.0f s)", what, type(exc).__name__, exc, delay)


def _claim_identity(given: str | None, cache_dir: Path) -> tuple[WorkerIdentity, str]:
    """This worker's name and its state file (locked), plus a note to log if the file
    cannot be used. Without ``--name``, the name used last time in this cache dir."""
    folder = identity_dir(cache_dir)
    if given:
        identity = WorkerIdentity(folder, given[:NAME_MAX])
        if identity.acquire():
            return identity, ""
        return identity, (f"another worker named {identity.name!r} runs with the cache "
                          f"dir {cache_dir}; this one registers as a new worker")
    before = remembered_name(folder)
    if before:
        identity = WorkerIdentity(folder, before[:NAME_MAX])
        if identity.acquire():
            return identity, ""
    identity = WorkerIdentity(folder, default_name())
    identity.acquire()
    if not before:  # the remembered name stays with the worker that runs under it
        remember_name(folder, identity.name)
    return identity, ""


# ---------------------------------------------------------------- entry point

LOG_FORMAT = "%(asctime)s worker {name}: %(message)s"
LOG_TIME_FORMAT = "%H:%M:%S"


def configure_logging(name: str, level: int = logging.INFO) -> None:
    """Concise lines on stderr for every ``parallel_pilot.worker`` logger."""
    root = logging.getLogger("parallel_pilot.worker")
    for handler in list(root.handlers):
        if getattr(handler, "_pilot_worker", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT.format(name=name.replace("%", "%%")),
                                           LOG_TIME_FORMAT))
    handler._pilot_worker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def run_worker(settings: WorkerSettings, *,
               connection_factory: ConnectionFactory | None = None) -> int:
    """Run a worker until SIGTERM/SIGINT; the exit code for ``pilot worker``.

    First signal: stop leasing, let running tasks finish for ``settings.drain_seconds``,
    then hand back the rest. Second signal: hand them back at once. Returns 0 after a clean
    stop, 2 when the worker could not start (bad settings, join token refused).
    """
    try:
        worker = Worker(settings, connection_factory=connection_factory)
    except PilotError as exc:
        configure_logging(settings.name or "-")
        log.error("error: %s", exc.message)
        return 2
    configure_logging(worker.name)
    previous: dict[signal.Signals, object] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, worker.on_signal)
    try:
        return worker.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
