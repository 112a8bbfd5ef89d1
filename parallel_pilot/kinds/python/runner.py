"""The child process of ``python`` tasks: ``python .../kinds/python/runner.py DIR`` runs the
task laid out in DIR; ``runner.py --serve ROOT`` is reused across a job's tasks (``serve``).

It loads the function and the chunk of calls from ``DIR`` (see ``calls``), runs each call,
and writes one outcome per call. An exception raised by a call is an outcome, not a
failure of the task; only a function or argument that cannot be loaded here (a module the
worker lacks) ends the process with ``LOAD_ERROR_EXIT`` and the reason on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import cloudpickle

if __package__:
    from parallel_pilot.kinds.python import calls
else:  # run as a file by the worker: the child starts without importing the package
    import calls  # type: ignore[no-redef]  # calls.py lies next to this file

PARENT_CHECK_SECONDS = 0.5  # how often a reused child checks that its worker still lives


class _Loader:
    """Argument slots -> objects; a shared blob is read and unpickled once per process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs: dict[str, Any] = {}

    def arg(self, slot: calls.ArgSlot) -> Any:
        tag, value = slot
        if tag == "v":
            return cloudpickle.loads(value)
        sha = str(value)
        if sha not in self._blobs:
            path = self.root / calls.BLOBS_DIR / sha
            self._blobs[sha] = cloudpickle.loads(path.read_bytes())
        return self._blobs[sha]


def error_outcome(exc: BaseException) -> calls.Outcome:
    """The outcome of a call that raised: the pickled exception when it pickles, and always
    its type name, message and traceback (the client needs them if it cannot unpickle)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled: bytes | None = cloudpickle.dumps(exc)
    except Exception:
        pickled = None
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return (calls.ERROR, pickled, name, str(exc), tb)


def run_calls(task_dir: Path, loader: _Loader) -> tuple[list[calls.Outcome], int]:
    function = cloudpickle.loads((task_dir / calls.FUNCTION_FILE).read_bytes())
    chunk = calls.decode_chunk((task_dir / calls.CALLS_FILE).read_bytes())
    outcomes: list[calls.Outcome] = []
    errors = 0
    for args_slots, kwargs_slots in chunk:
        args = [loader.arg(s) for s in args_slots]
        kwargs = {k: loader.arg(s) for k, s in kwargs_slots.items()}
        try:
            value = function(*args, **kwargs)
            outcomes.append((calls.OK, cloudpickle.dumps(value)))
        except BaseException as exc:  # the call's failure is its result
            if isinstance(exc, KeyboardInterrupt):
                raise
            errors += 1
            outcomes.append(error_outcome(exc))
    return outcomes, errors


def run_task(task_dir: Path, loader: _Loader) -> int:
    """Run the chunk in ``task_dir`` and write its results there; the exit status."""
    started = time.monotonic()
    try:
        outcomes, errors = run_calls(task_dir, loader)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # loading failed: report it, the worker fails the task
        sys.stderr.write(f"cannot load the function or its arguments: "
                         f"{type(exc).__name__}: {exc}\n")
        traceback.print_exc()
        return calls.LOAD_ERROR_EXIT
    tmp = task_dir / (calls.RESULTS_FILE + ".part")
    tmp.write_bytes(calls.encode_outcomes(outcomes))
    os.replace(tmp, task_dir / calls.RESULTS_FILE)
    summary = {"count": len(outcomes), "errors": errors,
               "seconds": round(time.monotonic() - started, 6)}
    (task_dir / calls.SUMMARY_FILE).write_text(json.dumps(summary))
    return 0


def serve(root: Path, worker_pid: int | None = None) -> int:
    """Reused across a job's tasks: read task folder names (under ``root/tasks``) from
    stdin, run each, and end each with a ``DONE_MARKER`` line on stdout. Shared argument
    blobs (``root/blobs``) stay loaded between tasks. Ends when stdin closes, or when the
    process ``worker_pid`` is no longer its parent (bwrap's --die-with-parent does that
    in a sandbox, where the parent's pid is not visible)."""
    commands = os.fdopen(os.dup(0), "r")
    sys.stdin = open(os.devnull)  # user code must not read the commands
    if worker_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(worker_pid,), daemon=True).start()
    loader = _Loader(root)
    for line in commands:
        name = line.strip()
        if not name:
            continue
        status = run_task(root / calls.TASKS_DIR / name, loader)
        sys.stderr.flush()
        sys.stdout.write(f"{calls.DONE_MARKER} {name} {status}\n")
        sys.stdout.flush()
    return 0


def _exit_with_parent(parent: int) -> None:
    """A worker killed outright leaves its children to init: end with it, even in the
    middle of a long call (the closed stdin is only noticed between tasks)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--serve":
        worker_pid = int(argv[4]) if len(argv) > 4 and argv[3] == "--worker-pid" else None
        return serve(Path(argv[2]), worker_pid)
    workdir = Path(argv[1]) if len(argv) > 1 else Path.cwd()
    return run_task(workdir, _Loader(workdir))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
