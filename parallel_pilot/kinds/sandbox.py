"""Running a task's command inside bubblewrap (``bwrap``): no network, a read-only view of
the system, a private ``/tmp``, and only the task's working directory writable.

The whole root is bound read-only, so the Python interpreter, a virtual environment and
any tool the command uses stay readable; ``/tmp`` is replaced by a private tmpfs, so
paths under it that the command needs (the working directory, an interpreter or venv
living there) are bound again on top of it. A caller may hide more folders the same way
(``hide``: the worker's home, its blob cache, its other tasks' folders): each gets an
empty read-only tmpfs, and what must stay readable under it (``readable``) is bound again,
read-only. Folders inside the working directory can be bound read-only on top of it
(``read_only``), and device nodes (a GPU) can be let in (``devices``).

Mounts apply in the order of the command line, so the argv is built in layers: hiding
tmpfs mounts, read-only re-binds of what must stay readable, hides nested inside those
re-binds, the working directory, its read-only parts, and last the hidden folders are
remounted read-only (they had to stay writable while mount points were made in them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
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
    with tempfile.TemporaryDirectory(prefix="pilot-bwrap-probe-") as tmp:
        return probe_failure(bwrap_argv(["true"], Path(tmp), bwrap=exe, readable=()))


def probe_failure(argv: list[str]) -> str | None:
    """Run a sandboxed probe command; why it failed, or None when it exited 0."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
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


def _outermost(paths: list[Path]) -> list[Path]:
    """``paths`` without duplicates and without those lying under another one."""
    unique = sorted(set(paths), key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for path in unique:
        if not any(_under(path, top) for top in kept):
            kept.append(path)
    return kept


def bwrap_argv(argv: list[str], workdir: Path, *, bwrap: str = BWRAP,
               readable: Iterable[Path] | None = None, hide: Iterable[Path] = (),
               read_only: Iterable[Path] = (), devices: Iterable[Path] = (),
               setenv: Mapping[str, str] | None = None,
               writable_tmp: bool = True) -> list[str]:
    """``argv`` wrapped to run in bwrap with ``workdir`` as its only writable directory
    (and current directory).

    ``readable`` (default: the interpreter's paths) are kept readable where the private
    /tmp or a hidden folder would otherwise cover them. ``hide``: existing folders shown
    empty and read-only. ``read_only``: folders inside ``workdir`` bound read-only on top
    of it. ``devices``: device nodes bound in (``--dev-bind-try``). ``setenv``: variables
    set inside (``TMPDIR`` is ``/tmp`` unless given). ``writable_tmp=False`` makes the
    private /tmp read-only too, so that nothing but ``workdir`` can be written."""
    workdir = Path(workdir).absolute()
    keep = interpreter_paths() if readable is None else [Path(p).absolute() for p in readable]
    # a folder inside the workdir is covered by the workdir's own bind anyway; the root
    # (a service user's home may be /) is never hidden: the system must stay readable
    hidden = [h for h in (Path(p).absolute() for p in hide)
              if not _under(h, workdir) and h != Path("/")]
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
    tops = [p for p in _outermost([PRIVATE_TMP, *hidden]) if p != PRIVATE_TMP]
    for path in tops:
        wrapped += ["--tmpfs", str(path)]
    covers = [PRIVATE_TMP, *tops]
    rebound: list[Path] = []
    for path in sorted(set(keep), key=lambda p: (len(p.parts), str(p))):
        # a tmpfs hides what was under it; bring back what must stay readable
        if any(_under(path, c) and path != c for c in covers) and not _under(path, workdir):
            wrapped += ["--ro-bind-try", str(path), str(path)]
            rebound.append(path)
    nested = [p for p in hidden if p not in tops and any(_under(p, r) for r in rebound)]
    for path in _outermost(nested):
        wrapped += ["--tmpfs", str(path)]  # a hidden folder inside a re-bound one
        tops.append(path)
    wrapped += ["--bind", str(workdir), str(workdir)]
    for path in read_only:
        inside = Path(path).absolute()
        if _under(inside, workdir) and inside != workdir:
            wrapped += ["--ro-bind", str(inside), str(inside)]
    for device in devices:
        wrapped += ["--dev-bind-try", str(device), str(device)]
    for path in [*tops, *([] if writable_tmp else [PRIVATE_TMP])]:
        wrapped += ["--remount-ro", str(path)]
    env = {"TMPDIR": str(PRIVATE_TMP), **(setenv or {})}
    wrapped += ["--chdir", str(workdir)]
    for name, value in env.items():
        wrapped += ["--setenv", name, value]
    wrapped += ["--", *argv]
    return wrapped
