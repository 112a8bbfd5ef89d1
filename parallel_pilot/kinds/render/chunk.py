"""One chunk of a ``render`` job on a worker: the project is laid out in the task's folder
(``project/``, each file a hard link to the cached blob), Blender in a child process
renders the frames one at a time, and each finished frame is uploaded while the next one
renders.

The child is started with no shell, in its own process group, in the task's working
directory, with factory settings, auto-run scripts off and user configuration pointed
into the working directory; it is killed as soon as the task is told to stop. Uploads run
on their own thread so that a slow upload never stalls Blender on a full output pipe.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from parallel_pilot.core.project import check_project_path
from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.base import RunContext
from parallel_pilot.kinds.gpu_env import with_gpus
from parallel_pilot.kinds.process import run_process
from parallel_pilot.kinds.render.assemble import VIDEO_FRAMES_PREFIX, frame_output_path
from parallel_pilot.kinds.render.blend_file import read_header
from parallel_pilot.kinds.render.blender import (
    RENDER_SCRIPT,
    BlenderFailed,
    Event,
    OutputReader,
    can_open,
    child_env,
    describe_missing,
    failure,
    installed_blender,
)
from parallel_pilot.kinds.render.devices import render_device
from parallel_pilot.kinds.render.sandbox import render_argv, sandbox_env

PREVIEW_OUTPUT = "preview/latest.jpg"
SCENE_META_PATH = "meta/scene.json"
JOB_FILE = "render-job.json"
PROJECT_DIR = "project"  # the task folder's copy of the user's project
FRAMES_DIR = "frames"  # where Blender writes the frames of the chunk
FILE_OUTPUT_DIR = "file-output"  # where the compositor's File Output nodes are sent
FILE_OUTPUT_PREFIX = "file-output/"  # job outputs of the File Output nodes
# payload keys passed through to script.py as they are
_OVERRIDES = ("frames", "format", "color_depth", "engine", "samples", "resolution",
              "camera", "scene_name", "threads", "allow_missing_files", "absolute")


class _Uploader(threading.Thread):
    """Uploads files in the order they are queued; a newer preview replaces a queued one.
    The first error stops further uploads and sets ``halt`` (which stops Blender)."""

    def __init__(self, ctx: RunContext, halt: threading.Event) -> None:
        super().__init__(daemon=True, name="render-uploads")
        self.ctx, self.halt = ctx, halt
        self.items: queue.Queue[tuple[str, Path, int | None] | None] = queue.Queue()
        self.uploaded: dict[int, str] = {}  # frame -> SHA-256
        self.error: BaseException | None = None
        self._previews_queued = 0
        self._lock = threading.Lock()

    def put(self, output: str, file: Path, frame: int | None = None) -> None:
        if output == PREVIEW_OUTPUT:
            with self._lock:
                self._previews_queued += 1
        self.items.put((output, file, frame))

    def close(self) -> None:
        self.items.put(None)

    def run(self) -> None:
        while (item := self.items.get()) is not None:
            output, file, frame = item
            if output == PREVIEW_OUTPUT:
                with self._lock:
                    self._previews_queued -= 1
                    superseded = self._previews_queued > 0
                if superseded:
                    file.unlink(missing_ok=True)
                    continue
            if self.error is not None or self.ctx.stop_event.is_set():
                continue
            try:
                sha = self.ctx.upload_output(output, file)
            except Exception as exc:  # reported by run_chunk once Blender has stopped
                self.error = exc
                self.halt.set()
                continue
            if frame is not None:
                self.uploaded[frame] = sha
            if output != SCENE_META_PATH:
                file.unlink(missing_ok=True)  # keep the disk use of a long chunk small


def run_chunk(task: TaskLease, ctx: RunContext) -> dict[str, Any]:
    """Render the chunk's frames, uploading each as ``frames/NNNN.ext`` when it is done."""
    started = time.monotonic()
    payload = task.payload
    frames = [int(f) for f in payload["frames"]]
    main = str(payload.get("main") or payload.get("scene_file"))
    scene_file = main.rsplit("/", 1)[-1]
    install = installed_blender()
    if install is None:
        raise BlenderFailed("this worker has no Blender: install the bpy package "
                            "(pip install 'parallel-pilot[render]') or give --blender PATH")
    project = lay_out_project(task, ctx)
    blend = project / main
    file_version = _saved_by(blend, payload.get("blender_version"))
    if not can_open(install.version, file_version):
        raise BlenderFailed(f"{scene_file} was saved by Blender {file_version}, newer than "
                            f"this worker's {install.describe()}; it needs a worker with "
                            f"Blender {file_version} or later")
    out_dir = ctx.workdir / FRAMES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    job = {key: payload.get(key) for key in _OVERRIDES}
    job.update({"mode": "render", "blend": str(blend), "out_dir": str(out_dir),
                "project_dir": str(project), "preview": True,
                "file_output_dir": str(ctx.workdir / FILE_OUTPUT_DIR),
                "device": render_device(str(payload.get("device") or "any"), ctx.gpus)})
    job_file = ctx.workdir / JOB_FILE
    job_file.write_text(json.dumps(job))

    halt = threading.Event()
    uploader = _Uploader(ctx, halt)
    uploader.start()
    reader = OutputReader()
    state: dict[str, Any] = {"done": 0, "scene": None, "frame_seconds": {}}
    shown: deque[str] = deque(maxlen=reader.tail.maxlen)  # the log's last lines, as logged

    def on_line(line: str) -> None:
        event = reader.feed(line)
        readable = log_line(line, state["done"] + 1, len(frames))
        if readable is not None:
            ctx.log(readable)
            shown.append(readable)
        if event is not None:
            _handle(event, ctx, uploader, state, frames, payload)

    relay = threading.Thread(target=_relay_stop, args=(ctx.stop_event, halt), daemon=True)
    relay.start()
    ctx.log(f"rendering frames {frames[0]}..{frames[-1]} ({len(frames)}) with "
            f"{install.describe()}")
    # the child sees only the GPUs this attempt was given (none for a CPU task)
    command = install.command(RENDER_SCRIPT, job_file)
    env = with_gpus(child_env(ctx.workdir), ctx.gpus)
    if ctx.render_sandbox:  # bwrap: read-only system and project, no network
        command = render_argv(install, job_file, ctx.workdir, read_only=[project],
                              hide=ctx.private_paths)
        env = sandbox_env(env)
    proc = run_process(command, cwd=ctx.workdir, env=env, stop_event=halt, output_cap=0,
                       on_stdout=on_line, on_stderr=on_line)
    halt.set()  # ends the relay thread
    uploader.close()
    uploader.join()
    if ctx.stop_event.is_set():
        return {"stopped": True, "frames": _by_frame(uploader.uploaded)}
    if uploader.error is not None:
        raise uploader.error
    missing = [f for f in frames if f not in uploader.uploaded]
    if proc.exit_code != 0 or missing:
        reader.tail.clear()  # the reason quotes the log as the task's log shows it
        reader.tail.extend(shown)
        raise failure(reader, exit_code=proc.exit_code, install=install,
                      file_version=file_version, scene_file=scene_file)
    ctx.progress(1.0, f"{len(frames)} frames rendered")
    scene = state["scene"] or {}
    return {
        "frames": _by_frame(uploader.uploaded), "blender": install.version,
        "engine": scene.get("engine"), "fps": scene.get("fps"),
        "size": scene.get("output_size"), "frame_seconds": state["frame_seconds"],
        "seconds": round(time.monotonic() - started, 3),
    }


def log_line(line: str, number: int, total: int) -> str | None:
    """What the task's log shows for one line of Blender's output: Blender's own lines as
    they are, ``script.py``'s ``PILOT_*`` lines put in words (a finished frame, the scene,
    a missing file, a refusal), or None for those that only feed the worker (progress,
    previews). ``number`` is the place of a finished frame in the chunk."""
    tag, _, rest = line.rstrip("\r\n").partition(" ")
    if not tag.startswith("PILOT_"):
        return line
    try:
        return _LOG_LINES[tag](rest, number, total) if tag in _LOG_LINES else line
    except (ValueError, KeyError, TypeError, AttributeError):
        return line  # a line the worker could not read is worth showing as it came


def _frame_done(rest: str, number: int, total: int) -> str:
    frame, seconds, _path = rest.split(" ", 2)
    return f"frame {int(frame)} done in {float(seconds):.1f} s ({min(number, total)}/{total})"


def _scene(rest: str, _number: int, _total: int) -> str:
    scene = json.loads(rest)
    engine = str(scene.get("engine") or "")
    width, height = scene["output_size"]
    parts = [f"{_ENGINES.get(engine, engine)} {width}x{height}",
             f"{float(scene['fps']):g} fps"]
    if scene.get("samples"):
        parts.append(f"{scene['samples']} samples")
    if scene.get("format"):
        depth = f" {scene['color_depth']}-bit" if scene.get("color_depth") else ""
        parts.append(f"{scene['format']}{depth}")
    if scene.get("camera"):
        parts.append(f"camera {scene['camera']}")
    return f"scene {scene.get('scene')}: " + ", ".join(parts)


def _refused(rest: str, _number: int, _total: int) -> str:
    what, _, message = rest.partition(" ")
    return f"{_REFUSALS.get(what, 'failed')}: {message.strip()}"


_ENGINES = {"CYCLES": "Cycles", "BLENDER_EEVEE": "EEVEE", "BLENDER_EEVEE_NEXT": "EEVEE",
            "BLENDER_WORKBENCH": "Workbench"}
_REFUSALS = {"invalid": "refused", "open": "cannot open the file", "missing": "missing files",
             "render": "render failed", "internal": "internal error in the render script"}
_LOG_LINES = {
    "PILOT_STATS": lambda rest, n, t: None,  # progress, not log
    "PILOT_PREVIEW": lambda rest, n, t: None,
    "PILOT_VIDEO_FRAME": lambda rest, n, t: None,
    "PILOT_FRAME_DONE": _frame_done,
    "PILOT_SCENE": _scene,
    "PILOT_MISSING": lambda rest, n, t: f"missing: {describe_missing(rest)}",
    "PILOT_FILE_OUTPUT": lambda rest, n, t: f"File Output node wrote {rest.split(' ', 1)[0]}",
    "PILOT_DEVICE": lambda rest, n, t: f"rendering on {rest}",
    "PILOT_ERROR": _refused,
}


def _handle(event: Event, ctx: RunContext, uploader: _Uploader, state: dict[str, Any],
            frames: list[int], payload: dict[str, Any]) -> None:
    total = len(frames)
    if event.what == "progress" and event.frame is not None:
        done = state["done"]
        message = f"frame {event.frame} ({min(done + 1, total)}/{total})"
        fraction = done / total
        if event.sample is not None and event.samples:
            fraction += min(1.0, event.sample / event.samples) / total
            message += f" sample {event.sample}/{event.samples}"
        ctx.progress(min(fraction, 1.0), message)
    elif event.what == "frame_done" and event.frame is not None and event.path:
        state["done"] += 1
        state["frame_seconds"][str(event.frame)] = event.seconds
        uploader.put(frame_output_path(event.frame, Path(event.path).suffix.lstrip(".")),
                     Path(event.path), event.frame)
        ctx.progress(state["done"] / total, f"frame {event.frame} done "
                     f"({state['done']}/{total}) in {event.seconds:.1f} s")
    elif event.what == "video_frame" and event.frame is not None and event.path:
        uploader.put(frame_output_path(event.frame, "png", VIDEO_FRAMES_PREFIX),
                     Path(event.path))
    elif event.what == "file_output" and event.path and event.text:
        uploader.put(FILE_OUTPUT_PREFIX + event.text.replace("\\", "/"), Path(event.path))
    elif event.what == "preview" and event.path:
        uploader.put(PREVIEW_OUTPUT, Path(event.path))
    elif event.what == "scene":
        state["scene"] = event.data
        meta = ctx.workdir / "scene.json"
        meta.write_text(json.dumps(event.data, sort_keys=True))
        uploader.put(SCENE_META_PATH, meta)


def _saved_by(blend: Path, planned: str | None) -> str | None:
    """The Blender version that saved the file, from its header when this worker can read
    it exactly (the coordinator may have lacked ``zstandard`` for a compressed file)."""
    try:
        header = read_header(blend)
    except (InvalidInput, OSError):
        return planned  # Blender itself will say what is wrong with the file
    return header.version if header.exact else planned


def lay_out_project(task: TaskLease, ctx: RunContext) -> Path:
    """Every file of the project at its project path under ``project/`` (the task's inputs
    are the manifest's files); returns that folder."""
    root = ctx.workdir / PROJECT_DIR
    root.mkdir(exist_ok=True)
    for path in sorted(task.inputs):
        ctx.link_input(path, root / check_project_path(path))
    return root


def _relay_stop(stop: threading.Event, halt: threading.Event) -> None:
    """Set ``halt`` when the task is told to stop; ends when ``halt`` is set."""
    while not halt.is_set():
        if stop.wait(0.05):
            halt.set()


def _by_frame(uploaded: dict[int, str]) -> dict[str, str]:
    return {str(frame): sha for frame, sha in sorted(uploaded.items())}

