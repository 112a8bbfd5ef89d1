"""The worker agent: register, then one loop around the worker's state machine.

Threads: the caller's thread runs ``Worker.run()``, which only watches signals and waits
for the loop to end. The *loop* thread owns the exchange with the coordinator: it feeds
events to ``WorkerState`` (``worker/state.py``) and carries out its instructions: start an
attempt on a slot thread (``worker/runners.py``), stop one, send a sync
(``POST /workers/sync``), leave. Slot threads only run kinds and push their finished
attempts into the loop's queue, which wakes the loop at once; attempts that finish while a
sync is in flight go in the next one. Syncs are sent by two *sender* threads
(``worker/sender.py``), so the loop never waits on the network: one for short syncs, one
for an idle worker's long poll, which the loop gives up on at a stop. A
restarting coordinator is waited for with bounded back-off, never fatal. A worker
restarted under the same name with the same cache dir sends the id and token it was
given (``worker/identity.py``) and so takes its old row back.
"""

from __future__ import annotations

import logging
import queue
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from parallel_pilot.core.folders import (
    PRIVATE_DIR_MODE,
    HeldFolder,
    claim_folder,
    remove_stale_folders,
    tighten,
)
from parallel_pilot.core.protocol import Capabilities, RegisterRequest
from parallel_pilot.core.settings import WorkerSettings
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
from parallel_pilot.worker.identity import (
    Registration,
    WorkerIdentity,
    identity_dir,
    remember_name,
    remembered_name,
)
from parallel_pilot.worker.link import CoordinatorLink
from parallel_pilot.worker.loop import SyncLoop
from parallel_pilot.worker.runners import Runners
from parallel_pilot.worker.sender import Sender
from parallel_pilot.worker.state import (
    WorkerState,
)
from parallel_pilot.worker.task_run import TaskRun

LOOP_RETRY_SECONDS = 5.0  # seconds one register call retries before the loop backs off
BACKOFF_START_SECONDS = 1.0  # first pause after a failed registration
BACKOFF_MAX_SECONDS = 30.0  # longest pause between registrations while the coordinator is away
HARD_STOP_JOIN_SECONDS = 5.0  # seconds after the loop ends for tasks to kill children
WAIT_TICK_SECONDS = 0.2  # how often the main thread looks at received signals
CACHE_SUBDIR = Path(".cache") / "parallel-pilot" / "blobs"  # under the home directory
NAME_MAX = 100  # characters of a worker name (the wire's limit)
WORK_FOLDER_PREFIX = "pilot-worker-"  # a running worker's folder in the work root (locked)

ConnectionFactory = Callable[[str], Connection]

log = logging.getLogger(__name__)


def default_name() -> str:
    """``hostname-1a2b``: the host, and a short random part so two workers differ."""
    suffix = secrets.token_hex(2)
    host = socket.gethostname().split(".")[0] or "worker"
    return f"{host[: NAME_MAX - len(suffix) - 1]}-{suffix}"


class Worker(SyncLoop):
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
        # tasks' inputs and outputs; syncs (and registering) on a connection of their own,
        # quick to give up on registering so the loop logs and backs off on its own;
        # long polls on a third, given up on at shutdown
        self.link = CoordinatorLink(factory(settings.server))
        sync_connection = factory(settings.server)
        sync_connection.retry_seconds = min(sync_connection.retry_seconds, LOOP_RETRY_SECONDS)
        self.sync_link = CoordinatorLink(sync_connection)
        self.poll_link = CoordinatorLink(factory(settings.server))
        self.cache = BlobCache(cache_dir, settings.cache_bytes)
        self.work_folder, self._stale_folders = _claim_work_folder(settings.work_dir)
        # what a sandboxed task must not see of this worker: its home, cache, work root
        self.private_paths = private_folders(Path.home(), cache_dir, settings.work_dir)
        if settings.blender:
            use_blender(settings.blender)
        self.render_sandbox = self._decide_render_sandbox()
        self._capabilities = capabilities
        self.worker_id: int | None = None
        self.registered = threading.Event()
        self.fatal: PilotError | None = None
        self.state = WorkerState(settings.slots, now=clock())
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._hard_stop = threading.Event()
        self._runs: dict[tuple[int, int], TaskRun] = {}  # attempts executing, by key
        self._runners: Runners | None = None
        self._sender: Sender | None = None  # short syncs
        self._poller: Sender | None = None  # idle long polls
        self._signals = 0  # SIGTERM/SIGINT received, counted by on_signal
        self._announced: str | None = None  # the outage said in the log ("fast", "slow")

    # ------------------------------------------------------------ public

    @property
    def outcomes(self) -> Counter[str]:
        """Attempts settled, by outcome (completed, failed, released, dropped)."""
        return self.state.outcomes

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self, hard: bool = False) -> None:
        """Stop taking tasks and leave; ``hard`` hands running tasks back at once."""
        if hard:
            self._hard_stop.set()
        self._stopping.set()
        self._events.put(("stop", hard))

    def run(self) -> int:
        """Register, work until stopped, leave; 0 after a clean stop, 2 when the
        coordinator refused this worker (bad join token, revoked)."""
        if self._identity_note:
            log.warning("%s", self._identity_note)
        for stale in self._stale_folders:
            log.info("removed %s, left by a worker that was killed", stale)
        if "render" in self.settings.allow:
            if self.render_sandbox.enabled:
                log.info("renders run in a sandbox (bwrap: no network, read-only system, "
                         "only the task folder writable)")
            else:
                log.warning("renders run without a sandbox: %s", self.render_sandbox.reason)
        loop = threading.Thread(target=self._loop, name="worker-loop", daemon=True)
        loop.start()
        while loop.is_alive():
            loop.join(WAIT_TICK_SECONDS)
            self._poll_signals()
        self._close()
        return 2 if self.fatal is not None else 0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: only counts, since a handler must not take locks the
        interrupted main thread may hold; the main thread's waits act on the count."""
        self._signals += 1
        if self._signals >= 2:
            # a third signal should kill us even if shutdown hangs
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                          else signal.SIG_DFL)

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        try:
            if self._register():
                # a thread per CPU slot and per GPU slot
                self._runners = Runners(self.settings.slots + self.state.gpus)
                self._sender = Sender(self.sync_link, self._events, "worker-sync")
                # a poll whose turn comes after a stop is not sent: it could only bring
                # tasks that go straight back
                self._poller = Sender(self.poll_link, self._events, "worker-poll",
                                      skip=self._stopping.is_set)
                self._drive()
        except Exception:
            log.exception("the worker loop crashed; stopping")
            self._stop_all("the worker loop crashed")
        finally:
            self._stopping.set()

    def _close(self) -> None:
        """After the loop: let stopped tasks kill their children, close connections."""
        if self._runners is not None and not self._runners.close(HARD_STOP_JOIN_SECONDS):
            log.warning("%d task(s) did not stop in time", self._runners.busy)
        self.link.close()
        for sender, link in ((self._sender, self.sync_link), (self._poller, self.poll_link)):
            if sender is not None:
                sender.close()
            else:
                link.close()
        self.identity.release()
        self.work_folder.release()

    # ------------------------------------------------------------ registering

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
        before = self.identity.load(self.link.farm)
        request = RegisterRequest(join_token=self.settings.join_token, name=self.name,
                                  capabilities=capabilities,
                                  worker_id=before.worker_id if before else None,
                                  worker_token=before.worker_token if before else None)
        delay = BACKOFF_START_SECONDS
        while not self._stopping.is_set():
            try:
                answer = self.sync_link.register(request)
            except (Unauthorized, Forbidden, InvalidInput) as exc:
                self._fail_fatally(f"the coordinator refused to register this worker: {exc}")
                return False
            except Exception as exc:
                self._log_trouble("cannot register", exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)
                continue
            for link in (self.link, self.sync_link, self.poll_link):
                link.set_token(answer.worker_token)
            self.identity.save(self.link.farm,
                               Registration(answer.worker_id, answer.worker_token))
            self.worker_id = answer.worker_id
            self.state.lease_seconds = answer.lease_seconds
            self.state.sync_seconds = answer.heartbeat_seconds
            self.registered.set()
            again = before is not None and before.worker_id == answer.worker_id
            gpus = len(capabilities.gpus)
            # one GPU slot per GPU (0..N-1), as many as the coordinator allows
            self.state.gpus = gpus if answer.gpu_slots is None else min(gpus, answer.gpu_slots)
            log.info("registered with %s as worker %d%s (slots: %d CPU + %d GPU, kinds: %s)",
                     self.link.server, answer.worker_id, " again" if again else "",
                     self.settings.slots, self.state.gpus, ", ".join(self.settings.allow))
            for index, gpu in enumerate(capabilities.gpus[:self.state.gpus]):
                log.info("GPU %d: %s%s", index, gpu.name, f", {gpu.memory_bytes // 2**20} MiB"
                         if gpu.memory_bytes else "")
            if answer.slots is not None and answer.slots < self.settings.slots:
                log.warning("the coordinator allows this worker %d slot(s) (plus prefetch)",
                            answer.slots)
            if self.state.gpus < gpus:
                log.warning("the coordinator lets this worker run tasks on %d of its %d "
                            "GPUs", self.state.gpus, gpus)
            if answer.pending:
                log.info("waiting for an admin to approve worker %d (pilot workers approve "
                         "%d); no tasks until then", answer.worker_id, answer.worker_id)
            return True
        return False

    # ------------------------------------------------------------ helpers

    def _poll_signals(self) -> None:
        if self._signals >= 2 and not self._hard_stop.is_set():
            log.info("second signal: handing running tasks back now")
            self.request_stop(hard=True)
        elif self._signals >= 1 and not self._stopping.is_set():
            self.request_stop()

    def _fail_fatally(self, message: str) -> None:
        log.error("%s", message)
        self.fatal = PilotError(message)
        self._stopping.set()

    def _log_trouble(self, what: str, exc: Exception, delay: float) -> None:
        if isinstance(exc, ServerUnavailable):
            # quiet while the coordinator restarts: one line per try is enough
            log.warning("%s: %s (retrying in %.0f s)", what, exc, delay)
        else:
            log.warning("%s: %s: %s (retrying in %.0f s)", what, type(exc).__name__, exc, delay)


def _claim_work_folder(work_dir: Path | None) -> tuple[HeldFolder, list[Path]]:
    """This worker's folder for its tasks and reused children, in ``work_dir`` (default:
    the system's temporary folder), after removing the folders killed workers left there."""
    root = work_dir if work_dir is not None else Path(tempfile.gettempdir())
    if work_dir is not None:
        root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        tighten(root, PRIVATE_DIR_MODE)
    stale = remove_stale_folders(root, WORK_FOLDER_PREFIX)
    return claim_folder(root, WORK_FOLDER_PREFIX), stale


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
