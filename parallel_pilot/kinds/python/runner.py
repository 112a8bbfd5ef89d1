"""The child process of ``python`` tasks: ``python .../kinds/python/runner.py DIR`` runs the
task laid out in DIR; ``runner.py --serve ROOT`` is reused across a job's tasks (``serve``).

It loads the function and the chunk of calls from ``DIR`` (see ``calls``), runs each call,
and writes one outcome per call. An exception raised by a call is an outcome, not a
failure of the task; only a function or argument that cannot be loaded here (a module the
worker lacks) ends the process with ``LOAD_ERROR_EXIT`` and the reason on stderr.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

if __package__:
    from parallel_pilot.kinds import warm_child
    from parallel_pilot.kinds.python import calls
else:  # run as a file by the worker: the child starts without importing the package
    import calls  # type: ignore[no-redef]  # calls.py lies next to this file

    def _load_by_path(name: str, path: Path) -> ModuleType:
        # by path, not through sys.path: a user's module must not be shadowed by ours
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    warm_child = _load_by_path("_pilot_warm_child",
                               Path(__file__).resolve().parents[1] / "warm_child.py")


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
    """Reused across a job's tasks (``kinds/warm_child.py``): shared argument blobs
    (``root/blobs``) stay loaded between tasks."""
    loader = _Loader(root)
    return warm_child.serve(root, lambda task_dir: run_task(task_dir, loader),
                            tasks_dir=calls.TASKS_DIR, done_marker=calls.DONE_MARKER,
                            worker_pid=worker_pid)


def main(argv: list[str]) -> int:
    serving = warm_child.serve_args(argv[1:])
    if serving is not None:
        return serve(*serving)
    workdir = Path(argv[1]) if len(argv) > 1 else Path.cwd()
    return run_task(workdir, _Loader(workdir))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
