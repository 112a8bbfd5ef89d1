"""`pilot worker` processes forked from one warm interpreter, for tests that start a
hundred workers (the churn test): a fresh `python -m parallel_pilot worker` spends about a
second of CPU importing before it registers, and a hundred of them on two cores is the
test's running time. Here one process (`python -m tests.e2e.forked_workers`, started by
``ForkedWorkers``) imports the CLI and the worker once, then forks a child per request;
the child is a real worker process from there on: the same command line, environment and
log file as ``LocalCluster.add_worker``, the same code from ``pilot worker``'s entry
point, its own pid to SIGKILL. Only the import is shared (nothing runs before the fork:
no thread, no connection, no settings read)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from parallel_pilot.client.local_cluster import LocalCluster, _parent_death_signal

GONE_TIMEOUT = 10.0  # seconds a killed or stopped worker may take to disappear
STOP_SIGNAL_SECONDS = 5.0  # after SIGTERM, seconds before the remaining workers get SIGKILL


class ForkedWorkers:
    """Start workers of ``cluster`` by fork (``start``), kill one (``kill``), stop all."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.pids: dict[str, int] = {}
        root = Path(__file__).resolve().parents[2]
        self._forker = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.forked_workers"], cwd=root,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(root)}, preexec_fn=_parent_death_signal())
        self._requests: IO[str] = self._forker.stdin  # type: ignore[assignment]
        self._answers: IO[str] = self._forker.stdout  # type: ignore[assignment]

    def start(self, name: str, *, slots: int = 1, extra: list[str] | None = None) -> int:
        argv, log, env = self.cluster.worker_spec(name, slots=slots, extra_args=extra or [])
        self._requests.write(json.dumps({"argv": argv, "log": str(log), "env": env}) + "\n")
        self._requests.flush()
        answer = self._answers.readline()
        if not answer.strip().isdigit():
            raise RuntimeError(f"the worker forker did not start {name}: {answer!r}")
        self.pids[name] = int(answer)
        return self.pids[name]

    def kill(self, name: str) -> None:
        """SIGKILL the worker (no hand-back: its leases expire) and wait until it is gone."""
        pid = self.pids.pop(name)
        os.kill(pid, signal.SIGKILL)
        _wait_gone([pid], GONE_TIMEOUT)

    def stop(self) -> None:
        """Stop the remaining workers (SIGTERM, then SIGKILL), then the forker."""
        pids = list(self.pids.values())
        self.pids.clear()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pids, STOP_SIGNAL_SECONDS):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_gone(pids, GONE_TIMEOUT)
        self._requests.close()
        try:
            self._forker.wait(GONE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._forker.kill()
            self._forker.wait(GONE_TIMEOUT)


def _alive(pid: int) -> bool:
    """Still in the process table and not a zombie (the forker reaps its children)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ------------------------------------------------------------------ the forker process


def _reap(signum: int, frame: Any) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the worker of ``request`` and never return."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # as LocalCluster's start_new_session
        dies_with_forker = _parent_death_signal()  # ... and its pre-exec hook
        if dies_with_forker is not None:
            dies_with_forker()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        from parallel_pilot.client.cli import cli

        cli.main(request["argv"], prog_name="pilot")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def serve() -> None:
    # everything `pilot worker` imports, before any fork
    import parallel_pilot.client.cli  # noqa: F401
    import parallel_pilot.kinds.sandbox  # noqa: F401
    import parallel_pilot.worker.agent  # noqa: F401

    signal.signal(signal.SIGCHLD, _reap)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(pid, flush=True)


if __name__ == "__main__":
    serve()
