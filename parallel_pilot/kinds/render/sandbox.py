"""The render sandbox: Blender for a render chunk runs inside bubblewrap (``bwrap``).

A .blend is a stranger's file. Inside the sandbox Blender sees a read-only system, no
network (not even loopback or the worker's Unix sockets under ``/run``), none of the
worker's private folders (its home, ``/root``, ``/home``, its blob cache, its work root
with the other tasks' folders: each is an empty read-only tmpfs), and only the task's
working directory is writable, with the job's ``project/`` folder bound read-only on top
of it (its files are hard links into the blob cache: nothing may write through them).
What Blender needs stays readable: the interpreter and venv with ``bpy``, this package
(the render script), a ``blender`` executable's folder. ``HOME`` and ``TMPDIR`` point
into the task folder. GPU device nodes are let in so Cycles can render on a GPU.

It is on by default on a worker where bwrap works (``render_sandbox_decision``, probed
once at start); ``pilot worker --no-render-sandbox`` turns it off.
"""

from __future__ import annotations

import glob
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from parallel_pilot.kinds.render.blender import RENDER_SCRIPT, BlenderInstall
from parallel_pilot.kinds.sandbox import (
    BWRAP,
    bwrap_argv,
    find_bwrap,
    interpreter_paths,
    probe_failure,
    sandbox_unavailable_reason,
)

SANDBOX_HOME = "home"  # the child's HOME, a folder of the task's working directory
SANDBOX_TMP = "tmp"  # the child's TMPDIR, a folder of the task's working directory
# folders of any machine that may hold what is not the job's: homes, service sockets
SYSTEM_PRIVATE = (Path("/root"), Path("/home"), Path("/run"), Path("/var/tmp"))
# device nodes Cycles needs to render on a GPU (NVIDIA, AMD/Intel DRM, AMD ROCm)
GPU_DEVICE_PATTERNS = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri", "/dev/kfd")
PRIVATE_ENV_PREFIX = "PILOT_"  # the worker's own settings (join token) stay outside


@dataclass(frozen=True)
class RenderSandboxDecision:
    """Whether this worker runs Blender in bwrap, and why not when it does not."""

    enabled: bool
    reason: str | None = None  # why renders run without a sandbox


def private_folders(home: Path, cache_dir: Path, work_root: Path | None) -> tuple[Path, ...]:
    """Folders of this worker a render must not see: its home, its blob cache, its work
    root (default: the system's temporary folder, where task folders are made)."""
    root = work_root if work_root is not None else Path(tempfile.gettempdir())
    return tuple(Path(p).absolute() for p in (home, cache_dir, root))


def blender_folders(install: BlenderInstall) -> list[Path]:
    """What must stay readable for ``install``: the interpreter and this package, and for a
    ``blender`` executable its folder (its bundled Python and data files lie beside it)."""
    paths = [*interpreter_paths(), RENDER_SCRIPT.resolve().parent]
    if install.kind == "executable":
        exe = Path(install.path)
        paths += [exe.absolute().parent, exe.resolve().parent]
    return paths


def gpu_devices() -> list[Path]:
    """This machine's GPU device nodes (none on a machine without a GPU)."""
    return sorted(Path(p) for pattern in GPU_DEVICE_PATTERNS for p in glob.glob(pattern))


def sandbox_env(env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment without the worker's own ``PILOT_*`` settings."""
    return {k: v for k, v in env.items() if not k.startswith(PRIVATE_ENV_PREFIX)}


def sandbox_argv(argv: list[str], install: BlenderInstall, workdir: Path, *,
                 hide: Iterable[Path] = (), read_only: Iterable[Path] = (),
                 bwrap: str = BWRAP) -> list[str]:
    """``argv`` (Blender, or a probe standing in for it) run in the render sandbox with
    ``workdir`` the only writable folder; ``hide`` adds folders (the worker's cache and
    work root) to ``SYSTEM_PRIVATE``; ``read_only`` are folders of ``workdir`` bound
    read-only (the project). Hidden folders that do not exist are left out."""
    workdir = Path(workdir).absolute()
    home, tmp = workdir / SANDBOX_HOME, workdir / SANDBOX_TMP
    for folder in (home, tmp):
        folder.mkdir(exist_ok=True)
    hidden = [p for p in (*SYSTEM_PRIVATE, *hide) if Path(p).is_dir()]
    return bwrap_argv(argv, workdir, bwrap=bwrap, readable=blender_folders(install),
                      hide=hidden, read_only=read_only, devices=gpu_devices(),
                      setenv={"HOME": str(home), "TMPDIR": str(tmp)}, writable_tmp=False)


def render_argv(install: BlenderInstall, job_file: Path, workdir: Path, *,
                hide: Iterable[Path] = (), read_only: Iterable[Path] = (),
                bwrap: str = BWRAP) -> list[str]:
    """The command that renders ``job_file`` with ``install`` inside the render sandbox."""
    return sandbox_argv(install.command(RENDER_SCRIPT, job_file), install, workdir,
                        hide=hide, read_only=read_only, bwrap=bwrap)


def render_sandbox_decision(wanted: bool, install: BlenderInstall | None,
                            hide: Iterable[Path] = ()) -> RenderSandboxDecision:
    """Probe once (at the worker's start) whether renders can run in the sandbox: off when
    the owner turned it off, bwrap is missing or cannot build this sandbox here."""
    if not wanted:
        return RenderSandboxDecision(False, "turned off (--no-render-sandbox)")
    reason = sandbox_unavailable_reason()
    exe = find_bwrap()
    if reason is None and exe is not None and install is not None:
        with tempfile.TemporaryDirectory(prefix="pilot-render-probe-") as tmp:
            reason = probe_failure(sandbox_argv(["true"], install, Path(tmp), hide=hide,
                                                bwrap=exe))
    return RenderSandboxDecision(reason is None, reason)
