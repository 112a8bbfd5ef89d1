"""``render``: a Blender project (a .blend and every file it uses, as a manifest of
project path -> blob), a frame range and overrides, rendered in chunks by Blender on the
workers, then assembled into ``video.mp4`` and ``frames.zip`` by one dependent task.

Owns the job parameters, the submit-time checks (the main file is a .blend; frames, camera
and scene name against the facts a client read from the file), the plan (chunks +
assembly), and ``run``'s dispatch. A job that names only ``scene`` is a project of that
one file. A chunk (``chunk.py``) uploads ``frames/NNNN.ext`` as each
frame finishes; the assembly task reads the job's frame outputs through
``ctx.job_outputs("frames/")`` and ``ctx.fetch_blob``, since its inputs cannot be known
when the job is planned.

Without a chunk size the job is planned adaptive (``spread.py``): one frame in each 1/24th
of the range first, then the ranges between them, which the coordinator cuts as workers
take them, so each task takes about the coordinator's ``chunk_seconds`` on its worker
(``coordinator/services/chunking.py``). A job that gives ``chunk`` gets fixed chunks of
that size. ``default_chunk`` (``ceil(frames / 24)`` clamped to 1..10) is the fixed size
the coordinator used before, kept for the farm bench's comparison.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from parallel_pilot.core import project as project_rules
from parallel_pilot.core.protocol import TaskLease, check_sha256
from parallel_pilot.core.ranges import parse_int_range
from parallel_pilot.core.requirements import version_tuple
from parallel_pilot.core.units import human_bytes
from parallel_pilot.errors import InvalidInput, InvalidRange
from parallel_pilot.kinds.base import FinishedTask, RunContext, TaskPart, TaskSpec
from parallel_pilot.kinds.render import spread
from parallel_pilot.kinds.render.assemble import (
    FRAMES_PREFIX,
    VIDEO_FRAMES_PREFIX,
    encode_video,
    find_ffmpeg,
    format_frames,
    match_frames,
    zip_frames,
)
from parallel_pilot.kinds.render.blend_file import HEADER_READ_BYTES, parse_header
from parallel_pilot.kinds.render.chunk import SCENE_META_PATH, run_chunk

MAX_RENDER_FRAMES = 100_000  # frames one render job may ask for
MAX_CHUNK = 1000  # frames one task may be given
DEFAULT_TARGET_TASKS = 24  # chunks of default_chunk (the fixed size compared in the bench)
DEFAULT_MAX_CHUNK = 10  # frames in a default_chunk at most
DEFAULT_FPS = 24.0  # frames per second of the video when neither job nor scene says
MIN_BLENDER = "2.80"  # the oldest Blender the render script works with
VIDEO_OUTPUT = "video.mp4"
ZIP_OUTPUT = "frames.zip"
# bytes one output of a chunk task (a frame, a preview, a file output) may have; an 8K
# 32-bit multilayer EXR is well under it. The assembly's video and zip get the default.
MAX_FRAME_OUTPUT_BYTES = 4 * 1024**3

Engine = Literal["CYCLES", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH"]
ImageFormat = Literal["PNG", "JPEG", "OPEN_EXR", "OPEN_EXR_MULTILAYER", "TIFF"]
Device = Literal["cpu", "gpu", "any"]
_FILE_NAME = re.compile(r"^[^/\\\x00]{1,200}$")
_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?$")


class ProjectManifest(BaseModel):
    """The files of a project (``core/project.py``): path in the project -> SHA-256, the
    .blend to render, and the absolute paths the files use that move into the project."""

    model_config = ConfigDict(extra="forbid")

    main: str = Field(description="project path of the .blend to render")
    files: dict[str, str] = Field(description="project path -> SHA-256 of its blob")
    absolute: dict[str, str] = Field(default_factory=dict, description="an absolute path "
                                     "as written in the files -> its project path")

    @model_validator(mode="after")
    def _rules(self) -> ProjectManifest:
        project_rules.check_manifest(self.main, self.files, self.absolute)
        return self


class RenderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Facts a client with Blender read from the file (``inspect_blend``); when given, the
    # frames, camera and scene name are checked against them at submit. Declared first so
    # that the checks below can see them.
    scene_frame_start: int | None = None
    scene_frame_end: int | None = None
    scene_fps: float | None = Field(default=None, gt=0, le=1000)
    scene_cameras: list[str] | None = Field(default=None, max_length=10_000)
    scene_names: list[str] | None = Field(default=None, max_length=10_000)
    # the scene renders nothing without a camera (no sequencer strips to show instead)
    scene_needs_camera: bool | None = None
    scene_camera: str | None = Field(default=None, max_length=200)

    scene: str | None = Field(default=None, description="SHA-256 of the uploaded .blend "
                              "(a project of one file; or give ``project``)")
    scene_file: str = Field(default="scene.blend", description="file name of the .blend")
    project: ProjectManifest | None = Field(default=None, description="the .blend and "
                                            "every file it uses")
    frames: str | None = Field(default=None, validate_default=True,
                               description="1-240, 1-10,20-30 or 1-240x2; "
                               "the scene's range when the client sent it")
    chunk: int | None = Field(default=None, ge=1, le=MAX_CHUNK, description="frames per task")
    engine: Engine | None = None
    samples: int | None = Field(default=None, ge=1, le=1_000_000)
    resolution: int | None = Field(default=None, ge=1, le=100, description="percentage")
    format: ImageFormat | None = Field(default=None, description="frame file format "
                                       "(default: the scene's own, PNG for a video output)")
    color_depth: Literal["8", "16", "32"] | None = Field(default=None, description="bits "
                                                         "per channel (default: the scene's)")
    device: Device = Field(default="any", description="cpu, gpu (only workers whose "
                           "Blender sees a GPU) or any (a GPU where the worker has one)")
    camera: str | None = Field(default=None, min_length=1, max_length=200)
    scene_name: str | None = Field(default=None, min_length=1, max_length=200,
                                   description="the Blender scene to render")
    fps: float | None = Field(default=None, gt=0, le=1000, description="video frame rate")
    threads: int = Field(default=1, ge=0, le=1024,
                         description="render threads per task; 0 = all cores")
    allow_missing_files: bool = Field(default=False, description="render even when "
                                      "textures or other files the scene uses are missing")
    blender_version: str | None = Field(default=None, description="the Blender that saved "
                                        "the file (from its header when not given)")

    @field_validator("scene")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        return None if value is None else check_sha256(value)

    @field_validator("scene_file")
    @classmethod
    def _file_name(cls, value: str) -> str:
        if not _FILE_NAME.match(value) or value in (".", ".."):
            raise ValueError("must be a plain file name, like scene.blend")
        return value

    @field_validator("blender_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not _VERSION.match(value):
            raise ValueError("must look like 4.2 or 5.0.1")
        return value

    @field_validator("frames")
    @classmethod
    def _frames(cls, value: str | None, info: ValidationInfo) -> str:
        start, end = info.data.get("scene_frame_start"), info.data.get("scene_frame_end")
        if start is not None and end is not None and end < start:
            raise ValueError(f"the scene's frame range {start}-{end} ends before it starts")
        if value is None:
            if start is None or end is None:
                raise ValueError("give the frames to render, like 1-240")
            value = f"{start}-{end}"
        frames = expand_frames(value)
        outside = [f for f in frames
                   if (start is not None and f < start) or (end is not None and f > end)]
        if outside:
            raise ValueError(f"{format_frames(outside)} outside the scene's frame range "
                             f"{'…' if start is None else start}-{'…' if end is None else end}")
        return value

    @field_validator("camera")
    @classmethod
    def _camera(cls, value: str | None, info: ValidationInfo) -> str | None:
        cameras = info.data.get("scene_cameras")
        if value is not None and cameras is not None and value not in cameras:
            raise ValueError(f"no camera named {value!r} in the scene; its cameras: "
                             f"{', '.join(cameras) or 'none'}")
        return value

    @field_validator("scene_name")
    @classmethod
    def _scene_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        names = info.data.get("scene_names")
        if value is not None and names is not None and value not in names:
            raise ValueError(f"no scene named {value!r} in the file; its scenes: "
                             f"{', '.join(names) or 'none'}")
        return value

    @model_validator(mode="after")
    def _project_and_camera(self) -> RenderParams:
        if self.project is None:
            if self.scene is None:
                raise ValueError("give the .blend (scene) or the project to render")
            self.project = ProjectManifest(main=self.scene_file, files={
                self.scene_file: self.scene})
        main = self.project.main
        if self.scene is not None and self.scene != self.project.files[main]:
            raise ValueError(f"scene is not the blob of the project's main file {main}")
        self.scene, self.scene_file = self.project.files[main], main.rsplit("/", 1)[-1]
        problem = camera_problem(self.scene_needs_camera, self.camera, self.scene_camera,
                                 self.scene_cameras, self.scene_name)
        if problem:
            raise ValueError(problem)
        return self

    def frame_list(self) -> list[int]:
        return expand_frames(self.frames or "")

    def manifest(self) -> ProjectManifest:
        assert self.project is not None  # filled in by the validator
        return self.project


def camera_problem(needs_camera: bool | None, camera: str | None, active: str | None,
                   cameras: list[str] | None, scene_name: str | None) -> str | None:
    """Why a scene cannot render for want of a camera (None when it can, or when the
    client could not tell): no active camera, none chosen, and no sequencer edit."""
    if not needs_camera or camera is not None or active:
        return None
    which = f"scene {scene_name!r}" if scene_name else "the scene"
    have = (f"choose one with camera (its cameras: {', '.join(cameras)})" if cameras
            else "it has no camera at all: add one in Blender")
    return f"{which} has no active camera, so Blender would render nothing; {have}"


def expand_frames(text: str) -> list[int]:
    """The frame numbers of a range, as ``ValueError`` for pydantic when it is wrong."""
    try:
        frames = parse_int_range(text, limit=MAX_RENDER_FRAMES)
    except InvalidRange as exc:
        raise ValueError(exc.message) from None
    if any(f < 0 for f in frames):
        raise ValueError("frame numbers cannot be negative")
    return frames


def default_chunk(frame_count: int) -> int:
    """The fixed chunk size the coordinator gave a job that did not say, before chunks
    became adaptive (see the module docstring)."""
    return max(1, min(DEFAULT_MAX_CHUNK, math.ceil(frame_count / DEFAULT_TARGET_TASKS)))


def chunks_of(frames: list[int], size: int) -> list[list[int]]:
    return [frames[i:i + size] for i in range(0, len(frames), size)]


class RenderKind:
    name: ClassVar[str] = "render"
    params_model: ClassVar[type[BaseModel]] = RenderParams
    in_process: ClassVar[bool] = False

    def input_blobs(self, params: BaseModel) -> dict[str, str]:
        assert isinstance(params, RenderParams)
        return dict(params.manifest().files)

    def check_inputs(self, params: BaseModel,
                     read_prefix: Callable[[str, int], bytes]) -> BaseModel:
        """Refuse a file that is not a .blend; record the Blender version that saved it."""
        assert isinstance(params, RenderParams)
        project = params.manifest()
        header = parse_header(read_prefix(project.files[project.main], HEADER_READ_BYTES),
                              name=project.main)
        if params.blender_version is None or header.exact:
            return params.model_copy(update={"blender_version": header.version})
        return params

    def plan(self, params: BaseModel) -> list[TaskSpec]:
        assert isinstance(params, RenderParams)
        frames = params.frame_list()
        project = params.manifest()
        overrides = {
            "engine": params.engine, "samples": params.samples,
            "resolution": params.resolution, "camera": params.camera,
            "scene_name": params.scene_name, "threads": params.threads,
            "allow_missing_files": params.allow_missing_files, "format": params.format,
            "color_depth": params.color_depth, "device": params.device,
        }
        common = {"role": "chunk", "main": project.main, "absolute": project.absolute,
                  "blender_version": params.blender_version, **overrides}
        # a file records Blender's major.minor only: 5.0.1 can open what 5.0.0 saved
        saved_by = version_tuple(params.blender_version)
        requirements: dict[str, Any] = {
            "min_blender": f"{saved_by[0]}.{saved_by[1]}" if saved_by else MIN_BLENDER}
        if params.device == "gpu":
            requirements["render_gpu"] = True
        if params.chunk is not None:
            chunks = [(chunk, False) for chunk in chunks_of(frames, params.chunk)]
        else:  # spread frames first, then ranges the coordinator cuts as they are leased
            probes, ranges = spread.spread_chunks(frames)
            chunks = [(c, True) for c in probes + ranges]
        specs = [
            TaskSpec(name=spread.chunk_name(chunk),
                     payload={**common, "frames": chunk, **({spread.ADAPTIVE: True}
                                                            if adaptive else {})},
                     inputs=dict(project.files), requirements=dict(requirements))
            for chunk, adaptive in chunks
        ]
        specs.append(TaskSpec(
            name="assemble video",
            payload={"role": "assemble", "frames": frames,
                     "fps": params.fps or params.scene_fps},
            depends_on=list(range(len(specs))),
        ))
        return specs

    def work_units(self, payload: dict[str, Any]) -> int:
        return spread.work_units(payload)

    def split(self, payload: dict[str, Any], units: int) -> tuple[TaskPart, TaskPart]:
        return spread.split(payload, units)

    def unit_keys(self, payload: dict[str, Any]) -> list[int]:
        return spread.unit_keys(payload)

    def output_unit(self, path: str) -> int | None:
        return spread.output_unit(path)

    def allows_output(self, payload: dict[str, Any], path: str) -> bool:
        return spread.allows_output(payload, path)

    def max_output_bytes(self, payload: dict[str, Any], default: int) -> int:
        """A chunk's outputs are single frames; the assembly's are the whole job's."""
        return MAX_FRAME_OUTPUT_BYTES if payload.get("role") == "chunk" else default

    def run(self, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
        role = task.payload.get("role")
        if role == "chunk":
            return run_chunk(task, ctx)
        if role == "assemble":
            return run_assemble(task, ctx)
        raise InvalidInput(f"render task {task.task_id} has an unknown role {role!r}")

    def finalize(self, params: BaseModel, tasks: list[FinishedTask]) -> dict[str, bytes]:
        return {}  # the frames, video and zip are outputs of the tasks already


def run_assemble(task: TaskLease, ctx: RunContext) -> dict[str, Any]:
    """Fetch every frame of the job, check each is there once, encode and zip them. The
    video of a job whose frames are not 8-bit PNG or JPEG (OpenEXR, TIFF, 16-bit PNG) is
    made from the 8-bit ``video-frames/`` PNGs the chunks made with the scene's colours."""
    started = time.monotonic()
    payload = task.payload
    expected = [int(f) for f in payload["frames"]]
    ffmpeg = find_ffmpeg()
    if ffmpeg is None:
        raise RuntimeError("this worker has no ffmpeg: pip install imageio-ffmpeg "
                           "(part of parallel-pilot[render]) or install ffmpeg")
    frames = match_frames(ctx.job_outputs(FRAMES_PREFIX), expected)
    display = ctx.job_outputs(VIDEO_FRAMES_PREFIX)
    video_frames = match_frames(display, expected, prefix=VIDEO_FRAMES_PREFIX) if display \
        else frames
    video_ext = "png" if display else frames[0][1].rsplit(".", 1)[-1]
    fps = float(payload.get("fps") or scene_fps(ctx) or DEFAULT_FPS)
    wanted = {sha for _f, _p, sha in frames} | {sha for _f, _p, sha in video_frames}
    ctx.log(f"assembling frames {format_frames(expected)} ({len(expected)}): fetching "
            f"{len(wanted)} file(s)" + (" (8-bit copies for the video)" if display else ""))
    local: dict[str, Path] = {}
    for sha in wanted:
        if ctx.stop_event.is_set():
            return {"stopped": True}
        local[sha] = ctx.fetch_blob(sha)
        ctx.progress(0.5 * len(local) / len(wanted), f"fetched {len(local)}/{len(wanted)} "
                     "frame files")
    fetched = sum(path.stat().st_size for path in local.values())
    ctx.log(f"fetched {len(local)} file(s), {human_bytes(fetched)}")
    ctx.progress(0.5, f"encoding {len(video_frames)} frames at {fps:g} fps")
    ctx.log(f"encoding {len(video_frames)} {video_ext.upper()} frames at {fps:g} fps "
            "into H.264 video.mp4")
    video = ctx.workdir / VIDEO_OUTPUT
    count = encode_video([local[sha] for _f, _p, sha in video_frames], video, ext=video_ext,
                         fps=fps, ffmpeg=ffmpeg, workdir=ctx.workdir,
                         stop_event=ctx.stop_event)
    if ctx.stop_event.is_set():
        return {"stopped": True}
    ctx.log(f"video.mp4: {count} frames, {human_bytes(video.stat().st_size)}")
    ctx.progress(0.8, "zipping frames")
    archive = ctx.workdir / ZIP_OUTPUT
    zip_frames([(path.removeprefix(FRAMES_PREFIX), local[sha]) for _f, path, sha in frames],
               archive)
    ctx.log(f"frames.zip: {len(frames)} frames, {human_bytes(archive.stat().st_size)}")
    video_sha = ctx.upload_output(VIDEO_OUTPUT, video)
    zip_sha = ctx.upload_output(ZIP_OUTPUT, archive)
    ctx.log(f"video.mp4 and frames.zip uploaded; assembled in "
            f"{time.monotonic() - started:.1f} s")
    ctx.progress(1.0, f"video of {count} frames")
    return {"frames": count, "fps": fps, "video": video_sha, "zip": zip_sha,
            "first_frame": expected[0], "last_frame": expected[-1],
            "seconds": round(time.monotonic() - started, 3)}


def scene_fps(ctx: RunContext) -> float | None:
    """The scene's frame rate as a chunk recorded it (``meta/scene.json``), if any did."""
    for sha in ctx.job_outputs(SCENE_META_PATH).values():
        try:
            fps = json.loads(ctx.fetch_blob(sha).read_text()).get("fps")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(fps, int | float) and fps > 0:
            return float(fps)
    return None
