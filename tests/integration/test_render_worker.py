"""The render kind on a worker, for real: the bpy package renders a generated sample scene
with Cycles in a child process, ffmpeg assembles the frames. The worker's context is a
fake that keeps the job's outputs in memory, so no coordinator is involved."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import TaskSpec, parse_params
from parallel_pilot.kinds.render.blend_file import read_header
from parallel_pilot.kinds.render.blender import BlenderFailed, inspect_blend

SCENE_FRAMES = 12  # frames of the generated test scene
TEST_SAMPLES = 4  # Cycles samples per pixel in these tests
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG"

MISSING_TEXTURE_SCRIPT = """
import sys, bpy
src, out, missing = sys.argv[-3:]
bpy.ops.wm.open_mainfile(filepath=src, load_ui=False, use_scripts=False)
image = bpy.data.images.new("wood", 4, 4)
image.source = "FILE"
image.filepath = missing
mat = bpy.data.materials["Cube"]
node = mat.node_tree.nodes.new("ShaderNodeTexImage")
node.image = image
mat.node_tree.links.new(node.outputs["Color"],
                        mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"])
bpy.ops.wm.save_as_mainfile(filepath=out, compress=True)
"""


@pytest.fixture(scope="module")
def sample_blend(tmp_path_factory: pytest.TempPathFactory,
                 requirement: Callable[[str | None], None]) -> Path:
    requirement(None if importlib.util.find_spec("bpy") else
                "the bpy package is not installed (pip install 'parallel-pilot[render]')")
    out = tmp_path_factory.mktemp("scene") / "sample.blend"
    subprocess.run([sys.executable, "-m", "parallel_pilot.scenes.sample_scene", str(out),
                    "--frames", str(SCENE_FRAMES), "--width", "64", "--height", "36",
                    "--samples", str(TEST_SAMPLES)], check=True, capture_output=True,
                   timeout=120)
    return out


@pytest.fixture(scope="module")
def missing_texture_blend(sample_blend: Path) -> tuple[Path, str]:
    out = sample_blend.with_name("missing.blend")
    missing = str(sample_blend.parent / "textures" / "wood.png")
    subprocess.run([sys.executable, "-c", MISSING_TEXTURE_SCRIPT, str(sample_blend), str(out),
                    missing], check=True, capture_output=True, timeout=120)
    return out, missing


class FakeJob:
    """The job's side of a coordinator: blobs by SHA-256 and outputs by path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs: dict[str, Path] = {}
        self.outputs: dict[str, str] = {}
        self.uploads: list[tuple[str, str, list[str]]] = []  # path, sha, frames on disk
        self.lock = threading.Lock()

    def add_blob(self, file: Path) -> str:
        sha = hashlib.sha256(file.read_bytes()).hexdigest()
        stored = self.root / "blobs" / sha
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, stored)
        self.blobs[sha] = stored
        return sha


class FakeContext:
    """A ``RunContext`` over a ``FakeJob``."""

    def __init__(self, job: FakeJob, task: TaskLease) -> None:
        self.job, self.task = job, task
        self.workdir = job.root / f"task-{task.task_id}-{task.attempt}"
        self.workdir.mkdir(parents=True)
        self.stop_event = threading.Event()
        self.sandbox = self.render_sandbox = False
        self.gpus: tuple[int, ...] | None = None  # no worker gives GPUs here
        self.private_paths: tuple[Path, ...] = ()
        self.progress_messages: list[tuple[float | None, str | None]] = []
        self.lines: list[str] = []

    def input_path(self, name: str) -> Path:
        return self.job.blobs[self.task.inputs[name]]

    def copy_input(self, name: str, dest: Path) -> Path:
        shutil.copyfile(self.input_path(name), dest)
        return dest

    def link_input(self, name: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(self.input_path(name), dest)
        return dest

    def job_outputs(self, prefix: str = "") -> dict[str, str]:
        with self.job.lock:
            return {p: s for p, s in self.job.outputs.items() if p.startswith(prefix)}

    def fetch_blob(self, sha256: str) -> Path:
        return self.job.blobs[sha256]

    def progress(self, fraction: float | None, message: str | None = None) -> None:
        self.progress_messages.append((fraction, message))

    def log(self, line: str) -> None:
        self.lines.append(line)

    def upload_output(self, path: str, file: Path) -> str:
        frames_dir = self.workdir / "frames"
        on_disk = sorted(p.name for p in frames_dir.glob("0*")) if frames_dir.exists() else []
        sha = self.job.add_blob(file)
        with self.job.lock:
            self.job.outputs[path] = sha
            self.job.uploads.append((path, sha, on_disk))
        return sha


def lease(index: int, spec: TaskSpec, attempt: int = 1) -> TaskLease:
    return TaskLease(task_id=index, attempt=attempt, job_id=1, kind="render", name=spec.name,
                     payload=spec.payload, inputs=spec.inputs, lease_expires_at=0.0,
                     heartbeat_seconds=10.0)


def plan_job(job: FakeJob, blend: Path, **params: object) -> list[TaskSpec]:
    kind = get_kind("render")
    sha = job.add_blob(blend)
    checked = kind.check_inputs(parse_params(kind, {"scene": sha, **params}),
                                lambda s, n: job.blobs[s].read_bytes()[:n])
    return kind.plan(checked)


def run_task(job: FakeJob, index: int, spec: TaskSpec) -> tuple[dict, FakeContext]:
    ctx = FakeContext(job, lease(index, spec))
    return get_kind("render").run(lease(index, spec), ctx), ctx


def test_a_file_saved_by_bpy_has_the_5_0_header(sample_blend: Path,
                                                missing_texture_blend: tuple[Path, str],
                                                tmp_path: Path) -> None:
    header = read_header(sample_blend)
    assert (header.version, header.format_version, header.compression) == ("5.0", 1, None)
    compressed = read_header(missing_texture_blend[0])  # saved with compress=True
    assert (compressed.version, compressed.compression) == ("5.0", "zstd")
    job = FakeJob(tmp_path)
    assert plan_job(job, sample_blend, frames="1")[0].requirements == {"min_blender": "5.0"}


def test_chunk_uploads_each_frame_as_it_finishes(sample_blend: Path, tmp_path: Path) -> None:
    job = FakeJob(tmp_path)
    # enough samples that a frame takes a visible moment, so the order below is certain
    specs = plan_job(job, sample_blend, frames="2-4", chunk=3, engine="CYCLES", samples=32)
    assert [s.payload.get("frames") for s in specs] == [[2, 3, 4], [2, 3, 4]]
    result, ctx = run_task(job, 0, specs[0])
    frame_uploads = [(p, disk) for p, _s, disk in job.uploads if p.startswith("frames/")]
    assert [p for p, _ in frame_uploads] == ["frames/0002.png", "frames/0003.png",
                                             "frames/0004.png"]
    # when frame 2 went up, frame 4 was not rendered yet: frames stream, not batch
    assert "0004.png" not in frame_uploads[0][1]
    assert sorted(result["frames"]) == ["2", "3", "4"]
    assert result["frames"]["3"] == job.outputs["frames/0003.png"]
    assert job.blobs[job.outputs["frames/0002.png"]].read_bytes().startswith(PNG_MAGIC)
    assert job.blobs[job.outputs["preview/latest.jpg"]].read_bytes().startswith(JPEG_MAGIC)
    assert json.loads(job.blobs[job.outputs["meta/scene.json"]].read_text())["fps"] == 24.0
    assert any(m and "sample" in m for _f, m in ctx.progress_messages), ctx.progress_messages
    assert ctx.progress_messages[-1][0] == 1.0
    assert result["blender"] == "5.0.1" and result["size"] == [64, 36]


def test_job_renders_and_assembles_video_and_zip(sample_blend: Path, tmp_path: Path) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    job = FakeJob(tmp_path)
    specs = plan_job(job, sample_blend, frames="1-11x2", chunk=4, samples=TEST_SAMPLES)
    assert [s.payload.get("frames") for s in specs[:-1]] == [[1, 3, 5, 7], [9, 11]]
    started = time.monotonic()
    for index, spec in enumerate(specs[:-1]):
        run_task(job, index, spec)
    rendered = time.monotonic() - started
    started = time.monotonic()
    result, _ctx = run_task(job, len(specs) - 1, specs[-1])
    assembled = time.monotonic() - started
    print(f"rendered 6 frames in {rendered:.2f} s, assembled in {assembled:.2f} s")
    assert result["frames"] == 6 and result["fps"] == 24.0
    video = job.blobs[job.outputs["video.mp4"]]
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert frames == 6 and seconds == pytest.approx(6 / 24, abs=0.05)
    with zipfile.ZipFile(job.blobs[job.outputs["frames.zip"]]) as zf:
        names = zf.namelist()
        assert names == ["0001.png", "0003.png", "0005.png", "0007.png", "0009.png",
                         "0011.png"]
        for name in names:
            assert zf.read(name) == job.blobs[job.outputs[f"frames/{name}"]].read_bytes()


def test_assembly_refuses_a_missing_frame(sample_blend: Path, tmp_path: Path) -> None:
    job = FakeJob(tmp_path)
    specs = plan_job(job, sample_blend, frames="1-2", chunk=1, samples=1, resolution=50)
    for index, spec in enumerate(specs[:-1]):
        run_task(job, index, spec)
    del job.outputs["frames/0002.png"]
    with pytest.raises(InvalidInput, match=r"1 frame\(s\) missing under frames/: 2"):
        run_task(job, len(specs) - 1, specs[-1])


def test_openexr_frames_make_a_video(sample_blend: Path, tmp_path: Path) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    job = FakeJob(tmp_path)
    specs = plan_job(job, sample_blend, frames="5-6", format="OPEN_EXR", samples=1, fps=12)
    for index, spec in enumerate(specs[:-1]):
        run_task(job, index, spec)
    assert job.blobs[job.outputs["frames/0005.exr"]].read_bytes()[:4] == b"v/1\x01"
    assert job.blobs[job.outputs["video-frames/0005.png"]].read_bytes().startswith(PNG_MAGIC)
    run_task(job, len(specs) - 1, specs[-1])
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(
        str(job.blobs[job.outputs["video.mp4"]]))
    assert frames == 2 and seconds == pytest.approx(2 / 12, abs=0.05)


def test_stop_kills_blender_at_once(sample_blend: Path, tmp_path: Path) -> None:
    job = FakeJob(tmp_path)
    specs = plan_job(job, sample_blend, frames=f"1-{SCENE_FRAMES}", chunk=SCENE_FRAMES,
                     samples=64)
    ctx = FakeContext(job, lease(0, specs[0]))
    outcome: dict = {}
    # other tests' servers (PostgreSQL, MariaDB) are children too: only new ones count
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    runner = threading.Thread(target=lambda: outcome.update(
        get_kind("render").run(lease(0, specs[0]), ctx)))
    runner.start()
    deadline = time.monotonic() + 60
    while "frames/0001.png" not in job.outputs and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "frames/0001.png" in job.outputs
    stopped_at = time.monotonic()
    ctx.stop_event.set()
    runner.join(10)
    assert not runner.is_alive()
    assert time.monotonic() - stopped_at < 5
    assert outcome["stopped"] is True
    assert "frames/0012.png" not in job.outputs
    assert not {p.pid for p in psutil.Process().children(recursive=True)} - before


def test_not_a_blend_file_gives_an_actionable_reason(tmp_path: Path,
                                                     sample_blend: Path) -> None:
    job = FakeJob(tmp_path)
    bogus = tmp_path / "notes.blend"
    bogus.write_text("these are my notes, not a scene\n")
    kind = get_kind("render")
    params = parse_params(kind, {"scene": job.add_blob(bogus), "frames": "1",
                                 "scene_file": "notes.blend"})
    with pytest.raises(InvalidInput, match="notes.blend is not a .blend file"):
        kind.check_inputs(params, lambda s, n: job.blobs[s].read_bytes()[:n])
    # a worker given it anyway (no submit check) says why Blender cannot open it
    with pytest.raises(InvalidInput, match=r"cannot open notes.blend: .*not supported"):
        run_task(job, 0, kind.plan(params)[0])


@pytest.mark.parametrize("params, words", [
    ({"frames": "1", "camera": "Side"}, r"no camera named 'Side'; its cameras: Camera"),
    ({"frames": "1", "scene_name": "Other"}, r"no scene named 'Other'; its scenes: Scene"),
    ({"frames": "40-41", "chunk": 2},
     r"frame\(s\) 40, 41 outside the frame range 1-12 of scene 'Scene'"),
])
def test_wrong_requests_fail_without_retry(sample_blend: Path, tmp_path: Path,
                                           params: dict, words: str) -> None:
    job = FakeJob(tmp_path)
    specs = plan_job(job, sample_blend, samples=1, **params)
    with pytest.raises(InvalidInput, match=words):
        run_task(job, 0, specs[0])


def test_missing_texture_is_named(missing_texture_blend: tuple[Path, str],
                                  tmp_path: Path) -> None:
    blend, missing = missing_texture_blend
    job = FakeJob(tmp_path)
    specs = plan_job(job, blend, frames="1", samples=1)
    with pytest.raises(InvalidInput, match="files that are not in the project") as info:
        run_task(job, 0, specs[0])
    # named as written in the file, with what uses it
    assert f'{missing} (image "wood", in scene.blend: outside the project)' in str(info.value)
    # and it renders when the job says missing files are fine
    specs = plan_job(job, blend, frames="1", samples=1, allow_missing_files=True)
    result, _ctx = run_task(job, 1, specs[0])
    assert list(result["frames"]) == ["1"]


def test_a_file_newer_than_the_worker_blender_is_retryable(sample_blend: Path,
                                                           tmp_path: Path) -> None:
    job = FakeJob(tmp_path)
    future = tmp_path / "future.blend"
    content = sample_blend.read_bytes()
    assert content.startswith(b"BLENDER17-01v0500")
    future.write_bytes(b"BLENDER17-01v0901" + content[17:])  # as Blender 9.1 would save it
    specs = plan_job(job, future, frames="1")
    assert specs[0].requirements == {"min_blender": "9.1"}
    # the scheduler would not lease it here; if it did, the worker says why, retryably
    started = time.monotonic()
    with pytest.raises(BlenderFailed, match=r"saved by Blender 9.1, newer than this worker"
                                            r"'s Blender 5.0.1 \(bpy package\); it needs a "
                                            r"worker with Blender 9.1 or later"):
        run_task(job, 0, specs[0])
    assert time.monotonic() - started < 1  # without starting Blender


def test_inspect_blend(sample_blend: Path, missing_texture_blend: tuple[Path, str],
                       tmp_path: Path) -> None:
    info = inspect_blend(sample_blend)
    assert info["blender_version"].startswith("5.0") and info["file_version"].startswith("5.0")
    assert info["scene"] == "Scene" and info["dependencies"] == []
    (scene,) = info["scenes"]
    assert (scene["frame_start"], scene["frame_end"], scene["fps"]) == (1, SCENE_FRAMES, 24.0)
    assert scene["cameras"] == ["Camera"] and scene["camera"] == "Camera"
    assert scene["resolution"] == [64, 36, 100]
    (dependency,) = inspect_blend(missing_texture_blend[0])["dependencies"]
    assert dependency["path"] == missing_texture_blend[1]
    assert dependency["missing"] == [missing_texture_blend[1]] and dependency["files"] == []
    assert dependency["used_by"] == 'image "wood"' and dependency["kind"] == "image"
    bogus = tmp_path / "x.blend"
    bogus.write_bytes(b"nope")
    with pytest.raises(InvalidInput, match="cannot open x.blend"):
        inspect_blend(bogus)
