"""`pilot server` and `pilot worker` processes forked from one warm interpreter, for the
tests' ``LocalCluster``s: a fresh `python -m parallel_pilot server` spends about 1.7 s of CPU
importing FastAPI, SQLAlchemy and alembic before it listens (a worker about 0.6 s), and the
suite starts a few hundred of them on two cores.

One forker process per test process (``python -m tests.warm_processes``, started by
``WarmForker``) imports what `pilot server` and `pilot worker` import, once, then forks a
child per request. The child is a real `pilot` process from there on: the command line,
environment, working directory and log file ``LocalCluster`` gives it, in a session of its
own, signalled when the forker dies (as ``LocalCluster``'s pre-exec hook does), running the
code of `pilot`'s entry point. Only the imports are shared: nothing runs in the forker
before a fork (no thread, no connection, no settings read). The forker reaps its children
and reports each exit code, so a ``ForkedProcess`` answers ``poll``/``wait`` as a
``subprocess.Popen`` does.

``tests/conftest.py`` makes every ``LocalCluster`` the tests create in-process start its
children here (``LocalCluster.spawner``); what the tests run as commands (`pilot up`, the
CLI) still starts the usual way."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from parallel_pilot.client.local_cluster import _parent_death_signal

START_TIMEOUT = 30.0  # seconds the forker may take to answer a request
STOP_TIMEOUT = 10.0  # seconds the forker may take to exit once its input is closed
PRELOADED = (  # modules the forker imports (only imports: nothing of them runs)
    "parallel_pilot.client.cli", "parallel_pilot.coordinator.server",
    "parallel_pilot.store.database", "parallel_pilot.kinds.sandbox", "parallel_pilot.worker.agent",
    "alembic.command", "alembic.runtime.migration", "uvicorn.main", "uvicorn.lifespan.on",
    "uvicorn.loops.auto", "uvicorn.protocols.http.auto", "psycopg", "pymysql",
)


class ForkedProcess:
    """A child of the forker, with the part of ``subprocess.Popen`` that callers use."""

    def __init__(self, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WarmForker:
    """The forker process of this test process; ``spawn`` is a ``LocalCluster.spawner``."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None  # started by the first spawn
        self._lock = threading.Lock()  # one request (and its answer) at a time
        self._started: queue.Queue[str] = queue.Queue()
        self._children: dict[int, ForkedProcess] = {}
        self._exits: dict[int, int] = {}  # exits read before their child was listed
        self._table = threading.Lock()  # guards the two above

    def _start(self) -> subprocess.Popen[str]:
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.warm_processes"], cwd=root,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(root)}, preexec_fn=_parent_death_signal())
        threading.Thread(target=self._read, args=(proc,), name="warm-forker",
                         daemon=True).start()
        return proc

    def spawn(self, argv: Sequence[str], log: Path, env: Mapping[str, str]) -> ForkedProcess:
        """A `pilot ARGV...` process writing to ``log``, with exactly ``env``."""
        request = {"argv": list(argv), "log": str(log), "env": dict(env), "cwd": os.getcwd()}
        with self._lock:
            if self._proc is None:
                self._proc = self._start()
            if self._proc.poll() is not None:
                raise RuntimeError(f"the warm forker exited ({self._proc.returncode})")
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            try:
                answer = self._started.get(timeout=START_TIMEOUT)
            except queue.Empty:
                raise RuntimeError("the warm forker did not answer") from None
            if not answer.isdigit():
                raise RuntimeError(f"the warm forker did not start pilot {argv}: {answer}")
            child = ForkedProcess(int(answer), ["pilot", *argv])
            with self._table:
                self._children[child.pid] = child
                code = self._exits.pop(child.pid, None)
            if code is not None:
                child._exit(code)
            return child

    def close(self) -> None:
        """End the forker (its children, if any are left, get SIGTERM as it goes)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "started":
                self._started.put(rest)
            elif word == "exit":
                pid, code = (int(x) for x in rest.split())
                with self._table:
                    child = self._children.pop(pid, None)
                    if child is None:
                        self._exits[pid] = code
                if child is not None:
                    child._exit(code)
        self._started.put("the forker's output ended")


# ------------------------------------------------------------------ the forker process


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become `pilot ARGV...` of ``request`` and never return."""
    code = 1
    try:
        for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.setsid()  # as LocalCluster's start_new_session
        dies_with_forker = _parent_death_signal()  # ... and its pre-exec hook
        if dies_with_forker is not None:
            dies_with_forker()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(request["cwd"])
        os.closerange(3, 65536)  # the forker's pipes are not the child's; tells it "set up"
        os.environ.clear()
        os.environ.update(request["env"])
        sys.stdin = open(0)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        from parallel_pilot.client.cli import cli

        cli.main(request["argv"], prog_name="pilot")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # as an uncaught exception ends `python -m parallel_pilot`
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(out: IO[str]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        out.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n")
        out.flush()


def serve() -> None:
    # what `pilot server` and `pilot worker` import as they start, before any fork
    import importlib

    for name in PRELOADED:
        with contextlib.suppress(ImportError):  # a database driver may not be installed
            importlib.import_module(name)

    _parent_death_signal()  # libc looked up once, here
    woken, wake = os.pipe()
    os.set_blocking(woken, False)
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the select below
    requests = sys.stdin.fileno()
    pending = b""
    while True:
        ready, _, _ = select.select([requests, woken], [], [])
        if woken in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(woken, 4096)
        _reap(sys.stdout)
        if requests not in ready:
            continue
        data = os.read(requests, 65536)
        if not data:
            return
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            set_up, child_end = os.pipe()  # closed by the child once in its own session
            pid = os.fork()
            if pid == 0:
                _child(json.loads(line))
            os.close(child_end)
            os.read(set_up, 1)  # returns at the child's closerange (or its exit)
            os.close(set_up)
            print(f"started {pid}", flush=True)


if __name__ == "__main__":
    serve()
