"""Blender on this worker: finding it, starting the render script in it, reading its output.

Blender is either the ``bpy`` package (run as ``python script.py``, in a child
process like any Blender) or a ``blender`` executable (run as ``blender -b
--factory-startup --disable-autoexec --python script.py``). ``find_blender`` picks,
in order: the executable the worker was configured with (``use_blender``), the ``bpy``
package of this interpreter, a ``blender`` on PATH.

``OutputReader`` turns the child's output lines (``script.py``'s ``PILOT_*`` lines
and Blender's own) into events and keeps what a failure reason needs: the last lines of
the log and hints (missing files, out of memory, a file from a newer Blender).
``failure_reason`` builds the message a person can act on from them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parallel_pilot.core.requirements import version_tuple
from parallel_pilot.errors import InvalidInput, PilotError
from parallel_pilot.kinds.process import run_process
from parallel_pilot.kinds.render.blend_file import version_from_code

RENDER_SCRIPT = Path(__file__).with_name("script.py")
VERSION_TIMEOUT_SECONDS = 20.0  # how long `blender --version` may take
INSPECT_TIMEOUT_SECONDS = 120.0  # how long opening a file to describe it may take
LOG_TAIL_LINES = 20  # lines of Blender's log quoted in a failure reason
MAX_HINTS = 20  # missing files (etc.) quoted in a failure reason
# exit codes of script.py
EXIT_INVALID, EXIT_OPEN, EXIT_RENDER = 3, 4, 5

_configured: str | None = None
_FRAME_SAMPLE = re.compile(r"(?:^|\|\s*)(?:Path Tracing )?Sample (\d+)/(\d+)")
_EEVEE_SAMPLE = re.compile(r"Rendering (\d+) / (\d+) samples")
_NATIVE_FRAME = re.compile(r"^Fra:(\d+)\b")
_OOM = re.compile(r"out of memory|CUDA_ERROR_OUT_OF_MEMORY|std::bad_alloc|MemoryError|"
                  r"Malloc returns null|failed to allocate", re.IGNORECASE)
_NEWER = re.compile(r"File written by newer Blender binary \((\d+)\.(\d+)\)")
_NATIVE_MISSING = (
    re.compile(r"Warning: Path '([^']+)' not found"),
    re.compile(r"Cannot read file \"([^\"]+)\": No such file"),
    re.compile(r"Unable to open (?:image )?['\"]?([^'\"]+?)['\"]?(?: for reading)?$"),
)


@dataclass(frozen=True)
class BlenderInstall:
    """One Blender this worker can run: the ``bpy`` package or an executable."""

    kind: str  # "module" (path is a Python interpreter with bpy) or "executable"
    path: str
    version: str | None

    def command(self, script: Path, job_file: Path) -> list[str]:
        """argv that runs ``script`` in this Blender with factory settings and no auto-run
        scripts (the script opens the .blend itself, with ``use_scripts=False``)."""
        if self.kind == "module":
            return [self.path, "-I", "-u", str(script), "--", str(job_file)]
        return [self.path, "-b", "--factory-startup", "--disable-autoexec", "-noaudio",
                "--python-exit-code", "1", "--python", str(script), "--", str(job_file)]

    def describe(self) -> str:
        what = "bpy package" if self.kind == "module" else self.path
        return f"Blender {self.version or '(unknown version)'} ({what})"


def child_env(workdir: Path) -> dict[str, str]:
    """The worker's environment with Blender's user folders moved into ``workdir``, so no
    user preferences, add-ons or startup file of this machine load into a render."""
    env = dict(os.environ)
    user = workdir / "blender-user"
    for name in ("BLENDER_USER_RESOURCES", "BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS",
                 "BLENDER_USER_DATAFILES", "BLENDER_USER_EXTENSIONS"):
        env[name] = str(user / name.rsplit("_", 1)[-1].lower())
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONSTARTUP", None)
    return env


def use_blender(path: str | None) -> None:
    """Make ``find_blender`` use this executable (the worker's ``--blender PATH``)."""
    global _configured
    _configured = path
    installed_blender.cache_clear()


def find_blender() -> BlenderInstall | None:
    """The Blender to render with: configured executable, the bpy package, or PATH."""
    if _configured:
        exe = shutil.which(_configured) or _configured
        return BlenderInstall("executable", exe, executable_version(exe))
    try:
        has_bpy = importlib.util.find_spec("bpy") is not None
    except (ImportError, ValueError):
        has_bpy = False
    if has_bpy:
        try:
            version: str | None = importlib.metadata.version("bpy")
        except importlib.metadata.PackageNotFoundError:
            version = None
        return BlenderInstall("module", sys.executable, version)
    on_path = shutil.which("blender")
    if on_path is not None:
        return BlenderInstall("executable", on_path, executable_version(on_path))
    return None


@functools.lru_cache(maxsize=1)
def installed_blender() -> BlenderInstall | None:
    """``find_blender`` once per worker process (``blender --version`` takes a second)."""
    return find_blender()


def executable_version(exe: str) -> str | None:
    """``blender --version``'s first line, ``Blender 4.2.3 LTS`` -> ``4.2.3``."""
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^Blender\s+(\d+(?:\.\d+)+)", proc.stdout, re.MULTILINE)
    return match.group(1) if match else None


def can_open(install_version: str | None, file_version: str | None) -> bool:
    """Whether a Blender of ``install_version`` can open a file saved by ``file_version``
    (only major.minor matter: a file records no patch version)."""
    have, need = version_tuple(install_version), version_tuple(file_version)
    if have is None or need is None:
        return True
    return have[:2] >= need[:2]


# ---------------------------------------------------------------- output


@dataclass
class Event:
    """Something the render script or Blender said that the worker acts on."""

    what: str  # frame_done, video_frame, preview, progress, scene, inspect, error
    frame: int | None = None
    path: str | None = None
    seconds: float | None = None
    sample: int | None = None
    samples: int | None = None
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class OutputReader:
    """Reads the child's output lines, one at a time, from any thread."""

    def __init__(self, tail_lines: int = LOG_TAIL_LINES) -> None:
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.missing: list[str] = []
        self.out_of_memory: list[str] = []
        self.newer_file: str | None = None
        self.error: tuple[str, str] | None = None  # (what, message) from PILOT_ERROR
        self._lock = threading.Lock()

    def feed(self, line: str) -> Event | None:
        with self._lock:
            return self._feed(line.rstrip("\r\n"))

    def _feed(self, line: str) -> Event | None:
        tag, _, rest = line.partition(" ")
        if tag == "PILOT_STATS":
            frame_text, _, status = rest.partition(" ")
            return _progress(int(frame_text) if frame_text.isdigit() else None, status)
        if tag != "PILOT_INSPECT":
            self.tail.append(line)
        if tag == "PILOT_FRAME_DONE":
            frame, seconds, path = rest.split(" ", 2)
            return Event("frame_done", frame=int(frame), seconds=float(seconds), path=path)
        if tag == "PILOT_PREVIEW":
            return Event("preview", path=rest)
        if tag == "PILOT_VIDEO_FRAME":
            frame, path = rest.split(" ", 1)
            return Event("video_frame", frame=int(frame), path=path)
        if tag == "PILOT_SCENE":
            return Event("scene", data=json.loads(rest))
        if tag == "PILOT_INSPECT":
            return Event("inspect", data=json.loads(rest))
        if tag == "PILOT_MISSING":
            self._hint(self.missing, describe_missing(rest))
            return None
        if tag == "PILOT_FILE_OUTPUT":
            relative, path = rest.split(" ", 1)
            return Event("file_output", path=path, text=relative)
        if tag == "PILOT_ERROR":
            what, _, message = rest.partition(" ")
            self.error = (what, message.strip())
            return Event("error", text=message.strip(), data={"what": what})
        return self._native(line)

    def _native(self, line: str) -> Event | None:
        """Blender's own lines: progress of a `blender -b` render, and failure hints."""
        if _OOM.search(line):
            self._hint(self.out_of_memory, line.strip())
        newer = _NEWER.search(line)
        if newer:
            self.newer_file = version_from_code(int(newer.group(1)))  # "(500.119)" -> 5.0
        for pattern in _NATIVE_MISSING:
            match = pattern.search(line)
            if match:
                self._hint(self.missing, match.group(1).strip())
                break
        native = _NATIVE_FRAME.match(line)
        if native:
            return _progress(int(native.group(1)), line)
        return None

    def _hint(self, hints: list[str], text: str) -> None:
        if text not in hints and len(hints) < MAX_HINTS:
            hints.append(text)


_WHY = {"missing": "not in the project", "outside": "outside the project",
        "linked": "Blender would not let it move into the project"}


def describe_missing(text: str) -> str:
    """A ``PILOT_MISSING`` line's problem for a person: the path as the user wrote it,
    what uses it and in which .blend of the project."""
    try:
        problem = json.loads(text)
        return (f"{problem['path']} ({problem['used_by']}, in {problem['blend']}: "
                f"{_WHY.get(problem.get('why'), problem.get('why'))})")
    except (ValueError, KeyError, TypeError):
        return text


def _progress(frame: int | None, status: str) -> Event | None:
    match = _FRAME_SAMPLE.search(status) or _EEVEE_SAMPLE.search(status)
    if match is None:
        return Event("progress", frame=frame, text=status.strip()) if frame else None
    return Event("progress", frame=frame, sample=int(match.group(1)),
                 samples=int(match.group(2)), text=status.strip())


# ---------------------------------------------------------------- failure


class BlenderFailed(PilotError):
    """Blender could not render the task; retrying on another worker may help."""

    code = "blender_failed"


def failure(reader: OutputReader, *, exit_code: int, install: BlenderInstall,
            file_version: str | None, scene_file: str) -> Exception:
    """The exception to raise for a failed Blender run: ``InvalidInput`` (not retryable)
    when the task itself is wrong, ``BlenderFailed`` (retryable) when another worker or a
    later try may succeed. Its message says what happened and what to do, then quotes the
    last lines of Blender's log."""
    what, message = reader.error or ("", "")
    tail = "\n".join(reader.tail)
    log = f"\nlast lines of Blender's log:\n{tail}" if tail else ""
    newer = reader.newer_file
    if (newer or what == "open") and not can_open(install.version, newer or file_version):
        return BlenderFailed(
            f"{scene_file} was saved by Blender {newer or file_version}, newer than this "
            f"worker's {install.describe()}; it needs a worker with Blender "
            f"{newer or file_version} or later{log}")
    if what == "missing" or (reader.missing and what in ("render", "")):
        files = "\n  ".join(reader.missing) or "(see the log)"
        return InvalidInput(
            f"the scene uses files that are not in the project sent with the job:\n  "
            f"{files}\nsubmit the project folder (pilot render packs every file the "
            "scene uses), or submit with allow_missing_files to render without them"
            f"{log}")
    if what == "invalid":
        return InvalidInput(f"{message}{log}")
    if what == "open":
        return InvalidInput(f"{install.describe()} cannot open {scene_file}: {message}{log}")
    if reader.out_of_memory or exit_code == -signal.SIGKILL:
        seen = "; ".join(reader.out_of_memory[:3])
        cause = (f"Blender ran out of memory ({seen})" if seen else
                 "Blender was killed (SIGKILL), most likely by the system for using too "
                 "much memory")
        return BlenderFailed(f"{cause}; lower the resolution or samples, simplify the "
                             f"scene, or render on a worker with more memory{log}")
    if exit_code < 0:
        name = _signal_name(-exit_code)
        return BlenderFailed(f"Blender crashed ({name}) rendering {scene_file}{log}")
    if what in ("render", "internal"):
        return BlenderFailed(f"Blender failed: {message}{log}")
    return BlenderFailed(f"Blender exited with code {exit_code} without finishing the "
                         f"chunk{log}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ---------------------------------------------------------------- inspect


def inspect_blend(path: Path, *, install: BlenderInstall | None = None,
                  timeout_seconds: float = INSPECT_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Open ``path`` in Blender (in a child process, scripts off) and describe it, for a
    client to check a job before it submits::

        {"blender_version": "5.0.1", "file_version": "5.0", "scene": "Scene",
         "missing_files": ["/home/ann/tex/wood.png"],
         "scenes": [{"scene": "Scene", "engine": "CYCLES", "fps": 24.0,
                     "frame_start": 1, "frame_end": 48, "frame_step": 1,
                     "resolution": [320, 180, 100], "output_size": [320, 180],
                     "camera": "Camera", "cameras": ["Camera"], "samples": 16}]}

    ``scene`` is the scene rendered when a job names none. Raises ``InvalidInput`` when
    the file cannot be opened, ``RuntimeError`` when there is no Blender here."""
    install = install or installed_blender()
    if install is None:
        raise RuntimeError("no Blender here: install the bpy package "
                           "(pip install 'parallel-pilot[render]') or put blender on PATH")
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="pilot-inspect-") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps({"mode": "inspect", "blend": str(path)}))
        reader = OutputReader()
        found: dict[str, Any] = {}

        def on_line(line: str) -> None:
            event = reader.feed(line)
            if event is not None and event.what == "inspect":
                found.update(event.data)

        proc = run_process(install.command(RENDER_SCRIPT, job_file), cwd=Path(tmp),
                           env=child_env(Path(tmp)), stop_event=threading.Event(),
                           timeout_seconds=timeout_seconds, on_stdout=on_line,
                           on_stderr=on_line)
    if found:
        return found
    if proc.timed_out:
        raise RuntimeError(f"Blender took more than {timeout_seconds:.0f} s to open {path}")
    raise failure(reader, exit_code=proc.exit_code, install=install, file_version=None,
                  scene_file=path.name)
