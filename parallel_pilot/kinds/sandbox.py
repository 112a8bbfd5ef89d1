"""Running a task's command inside bubblewrap (``bwrap``): no network, a read-only view of
the system, a private ``/tmp``, and only the task's working directory writable.

The whole root is bound read-only, so the Python interpreter, a virtual environment and
any tool the command uses stay readable; ``/tmp`` is replaced by a private tmpfs, so
paths under it that the command needs (the working directory, an interpreter or venv
living there) are bound again on top of it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

BWRAP = "bwrap"
PROBE_TIMEOUT = 10.0  # seconds the check that bwrap works may take
PRIVATE_TMP = Path("/tmp")


def find_bwrap() -> str | None:
    """The path of ``bwrap``, or None where it is not installed."""
    return shutil.which(BWRAP)


def sandbox_unavailable_reason() -> str | None:
    """Why this machine cannot sandbox tasks (None when it can): bwrap missing or unable
    to create its namespaces here (e.g. unprivileged user namespaces disabled)."""
    exe = find_bwrap()
    if exe is None:
        return "bwrap (bubblewrap) is not installed; install it (apt-get install bubblewrap)"
    try:
        with tempfile.TemporaryDirectory(prefix="pilot-bwrap-probe-") as tmp:
            probe = bwrap_argv(["true"], Path(tmp), bwrap=exe, readable=())
            proc = subprocess.run(probe, capture_output=True, text=True,
                                  timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap cannot run: {exc}"
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        return f"bwrap cannot create a sandbox here: {detail[-1] if detail else proc.returncode}"
    return None


def interpreter_paths() -> list[Path]:
    """Paths the Python running the worker lives in (the venv, its base installation and
    this package, which an editable install may keep under /tmp), which a sandboxed
    command may use and so must stay readable."""
    package = Path(__file__).resolve().parents[1]
    paths = {Path(sys.executable).resolve().parent, Path(sys.prefix).resolve(),
             Path(sys.base_prefix).resolve(), Path(sys.executable).parent.absolute(), package}
    return sorted(paths)


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def bwrap_argv(argv: list[str], workdir: Path, *, bwrap: str = BWRAP,
               readable: Iterable[Path] | None = None) -> list[str]:
    """``argv`` wrapped to run in bwrap with ``workdir`` as its only writable directory
    (and current directory). ``readable`` (default: the interpreter's paths) are kept
    readable where the private /tmp would otherwise hide them."""
    workdir = Path(workdir).absolute()
    keep = interpreter_paths() if readable is None else [Path(p).absolute() for p in readable]
    wrapped = [
        bwrap,
        "--unshare-all",  # network, IPC, PID, UTS, cgroup and user namespaces of its own
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into the worker's terminal
        "--cap-drop", "ALL",
        "--ro-bind", "/", "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", str(PRIVATE_TMP),
    ]
    for path in keep:
        # the tmpfs hides what was under /tmp; bring back what must stay readable
        if _under(path, PRIVATE_TMP) and path != PRIVATE_TMP and not _under(path, workdir):
            wrapped += ["--ro-bind-try", str(path), str(path)]
    wrapped += [
        "--bind", str(workdir), str(workdir),
        "--chdir", str(workdir),
        "--setenv", "TMPDIR", str(PRIVATE_TMP),
        "--",
        *argv,
    ]
    return wrapped
