"""The render kind's parameters, submit-time checks and plan (pure: no Blender needed)."""

from __future__ import annotations

import gzip
import re

import pytest
from pydantic import ValidationError

from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import allows_output, parse_params, split_task, work_units
from parallel_pilot.kinds.render.kind import (
    DEFAULT_MAX_CHUNK,
    MIN_BLENDER,
    RenderParams,
    chunks_of,
    default_chunk,
)

SHA = "b" * 64
BLEND_50 = b"BLENDER17-01v0500REND" + bytes(64)  # the first bytes Blender 5.0 writes


def params(**extra: object) -> RenderParams:
    result = parse_params(get_kind("render"), {"scene": SHA, **extra})
    assert isinstance(result, RenderParams)
    return result


def test_defaults() -> None:
    p = params(frames="1-10")
    assert (p.scene_file, p.format, p.threads, p.chunk, p.engine, p.device) == (
        "scene.blend", None, 1, None, None, "any")  # the scene's own format
    assert get_kind("render").input_blobs(p) == {"scene.blend": SHA}
    assert p.manifest().model_dump() == {"main": "scene.blend", "files": {"scene.blend": SHA},
                                         "absolute": {}}


@pytest.mark.parametrize("extra, words", [
    ({"frames": "1-10", "scene": "nothex"}, "SHA-256"),
    ({}, "give the frames"),
    ({"frames": "10-1"}, "ends before"),
    ({"frames": "abc"}, "cannot read"),
    ({"frames": "1-10", "engine": "POVRAY"}, "engine"),
    ({"frames": "1-10", "format": "GIF"}, "format"),
    ({"frames": "1-10", "samples": 0}, "samples"),
    ({"frames": "1-10", "resolution": 101}, "resolution"),
    ({"frames": "1-10", "chunk": 0}, "chunk"),
    ({"frames": "1-10", "scene_file": "../x.blend"}, "plain file name"),
    ({"frames": "1-10", "blender_version": "latest"}, "4.2"),
    ({"frames": "1-10", "output": "x.mp4"}, "output"),
    ({"frames": "-5-3"}, "negative"),
])
def test_invalid_params(extra: dict, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        params(**extra)


def test_facts_from_the_client_are_checked_at_submit() -> None:
    facts = {"scene_frame_start": 1, "scene_frame_end": 48, "scene_cameras": ["Camera"],
             "scene_names": ["Scene"]}
    with pytest.raises(InvalidInput, match=r"frames: 49-60 outside the scene's frame range 1-48"):
        params(frames="1-3,40-60", **facts)
    with pytest.raises(InvalidInput, match=r"camera: no camera named 'Side'.*cameras: Camera"):
        params(frames="1-3", camera="Side", **facts)
    with pytest.raises(InvalidInput, match=r"scene_name: no scene named 'Other'.*scenes: Scene"):
        params(frames="1-3", scene_name="Other", **facts)
    # without frames the scene's range is rendered
    assert params(**facts).frames == "1-48"
    assert params(frames="2-4", camera="Camera", scene_name="Scene", **facts).frame_list() \
        == [2, 3, 4]


def test_default_chunk_rule() -> None:
    assert default_chunk(1) == 1
    assert default_chunk(6) == 1
    assert default_chunk(48) == 2
    assert default_chunk(100) == 5
    assert default_chunk(240) == DEFAULT_MAX_CHUNK
    assert default_chunk(100_000) == DEFAULT_MAX_CHUNK
    assert chunks_of([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_plan_chunks_plus_an_assembly_that_depends_on_them() -> None:
    kind = get_kind("render")
    p = params(frames="5-11", chunk=3, engine="CYCLES", samples=8, resolution=25,
               camera="Camera", format="JPEG", blender_version="4.2")
    specs = kind.plan(p)
    assert [s.payload.get("frames") for s in specs[:-1]] == [[5, 6, 7], [8, 9, 10], [11]]
    assert [s.name for s in specs[:-1]] == ["frames 5-7", "frames 8-10", "frames 11"]
    for spec in specs[:-1]:
        assert spec.inputs == {"scene.blend": SHA}
        assert spec.requirements == {"min_blender": "4.2"}
        assert not spec.depends_on
        assert spec.payload["role"] == "chunk"
        assert (spec.payload["engine"], spec.payload["samples"], spec.payload["resolution"],
                spec.payload["camera"], spec.payload["format"], spec.payload["main"],
                spec.payload["threads"]) == ("CYCLES", 8, 25, "Camera", "JPEG", "scene.blend", 1)
    assemble = specs[-1]
    assert assemble.payload["role"] == "assemble"
    assert assemble.payload["frames"] == [5, 6, 7, 8, 9, 10, 11]
    assert assemble.depends_on == [0, 1, 2]
    assert assemble.inputs == {}  # it reads the frames from the job's outputs


def test_plan_with_a_step_and_an_uneven_chunk() -> None:
    specs = get_kind("render").plan(params(frames="1-240x2", chunk=7))
    chunks = [s.payload["frames"] for s in specs[:-1]]
    assert len(chunks) == 18 and chunks[0] == [1, 3, 5, 7, 9, 11, 13]
    assert chunks[-1] == [239]
    flat = [f for c in chunks for f in c]
    assert flat == list(range(1, 241, 2))  # every frame exactly once, in order
    assert specs[-1].payload["frames"] == flat
    assert specs[0].requirements == {"min_blender": MIN_BLENDER}  # version not known yet


def test_plan_requires_the_major_minor_that_saved_the_file() -> None:
    specs = get_kind("render").plan(params(frames="1", blender_version="5.0.119"))
    assert specs[0].requirements == {"min_blender": "5.0"}


def test_plan_fps_comes_from_the_job_or_the_scene() -> None:
    kind = get_kind("render")
    assert kind.plan(params(frames="1", fps=30))[-1].payload["fps"] == 30
    assert kind.plan(params(frames="1", scene_fps=25))[-1].payload["fps"] == 25
    assert kind.plan(params(frames="1"))[-1].payload["fps"] is None


def test_check_inputs_reads_the_version_that_saved_the_file() -> None:
    kind = get_kind("render")
    asked: list[tuple[str, int]] = []

    def read_prefix(sha: str, n: int) -> bytes:
        asked.append((sha, n))
        return BLEND_50[:n]

    checked = kind.check_inputs(params(frames="1-3"), read_prefix)
    assert isinstance(checked, RenderParams) and checked.blender_version == "5.0"
    assert asked[0][0] == SHA
    assert kind.plan(checked)[0].requirements == {"min_blender": "5.0"}
    old = kind.check_inputs(params(frames="1"), lambda s, n: gzip.compress(b"BLENDER-v279" * 4))
    assert isinstance(old, RenderParams) and old.blender_version == "2.79"


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + bytes(32), "not 'BLENDER'"),
    (gzip.compress(b"hello world", mtime=0), "gzip-compressed but does not hold a Blender file"),
    (b"BLENDERxyz", "not one Blender writes"),
])
def test_check_inputs_refuses_what_is_not_a_blend(content: bytes, words: str) -> None:
    with pytest.raises(InvalidInput, match=f"my.blend is not a .blend file.*{words}"):
        get_kind("render").check_inputs(params(frames="1", scene_file="my.blend"),
                                        lambda s, n: content[:n])


TEX = "d" * 64
PROJECT = {"main": "shots/shot.blend", "files": {"shots/shot.blend": SHA,
                                                 "textures/wood.png": TEX,
                                                 "_abs/mnt/tex/oak.png": "c" * 64},
           "absolute": {"/mnt/tex/oak.png": "_abs/mnt/tex/oak.png"}}


def test_a_project_travels_whole_to_every_chunk() -> None:
    p = RenderParams.model_validate({"project": PROJECT, "frames": "1-4", "chunk": 2})
    assert (p.scene, p.scene_file) == (SHA, "shot.blend")
    specs = get_kind("render").plan(p)
    assert get_kind("render").input_blobs(p) == PROJECT["files"]
    for spec in specs[:-1]:
        assert spec.inputs == PROJECT["files"]
        assert spec.payload["main"] == "shots/shot.blend"
        assert spec.payload["absolute"] == PROJECT["absolute"]


@pytest.mark.parametrize("change, words", [
    ({"files": {"../etc/passwd": SHA, "shots/shot.blend": SHA}}, "'..' parts"),
    ({"files": {"/etc/passwd": SHA, "shots/shot.blend": SHA}}, "relative"),
    ({"files": {"C:/x.png": SHA, "shots/shot.blend": SHA}}, "relative"),
    ({"files": {"a\\b.png": SHA, "shots/shot.blend": SHA}}, "backslash"),
    ({"files": {".pilot-outside/x": SHA, "shots/shot.blend": SHA}}, "worker's"),
    ({"files": {"shots/shot.blend": "nothex"}}, "SHA-256"),
    ({"main": "shots/other.blend"}, "not among"),
    ({"files": {"shots/shot.blend": SHA, "shots": TEX}}, "both a file and a folder"),
    ({"absolute": {"/mnt/x.png": "../x.png"}}, "'..' parts"),
])
def test_a_manifest_whose_paths_could_leave_the_project_is_refused(change: dict,
                                                                   words: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(words)):
        RenderParams.model_validate({"project": {**PROJECT, **change}, "frames": "1"})


def test_scene_must_be_the_main_files_blob() -> None:
    with pytest.raises(ValidationError, match="main file"):
        RenderParams.model_validate({"project": PROJECT, "scene": TEX, "frames": "1"})


def test_a_scene_without_a_camera_is_refused_with_its_cameras() -> None:
    base = {"scene": SHA, "frames": "1", "scene_needs_camera": True}
    with pytest.raises(ValidationError, match="no camera at all"):
        RenderParams.model_validate({**base, "scene_cameras": []})
    with pytest.raises(ValidationError, match="its cameras: Cam.001, Cam.002"):
        RenderParams.model_validate({**base, "scene_cameras": ["Cam.001", "Cam.002"]})
    RenderParams.model_validate({**base, "scene_cameras": ["Cam.001"], "camera": "Cam.001"})
    RenderParams.model_validate({**base, "scene_needs_camera": False})  # a sequencer edit
    RenderParams.model_validate({**base, "scene_camera": "Cam.001"})


def test_gpu_jobs_need_a_worker_whose_blender_sees_a_gpu() -> None:
    specs = get_kind("render").plan(params(frames="1-2", device="gpu"))
    assert specs[0].requirements["render_gpu"] is True
    assert "render_gpu" not in get_kind("render").plan(params(frames="1"))[0].requirements


def test_without_a_chunk_size_spread_frames_come_first_then_ranges_to_cut() -> None:
    specs = get_kind("render").plan(params(frames="1-1200"))
    chunks = [s.payload["frames"] for s in specs[:-1]]
    probes, ranges = chunks[:24], chunks[24:]
    # one frame at the start of each 1/24th of the range, in queue (plan) order
    assert probes == [[1 + 50 * i] for i in range(24)]
    assert ranges == [list(range(2 + 50 * i, 51 + 50 * i)) for i in range(24)]
    assert sorted(f for c in chunks for f in c) == list(range(1, 1201))  # each once
    assert all(s.payload["adaptive"] for s in specs[:-1])
    assert [s.name for s in specs[:2]] == ["frames 1", "frames 51"]
    assert specs[24].name == "frames 2-50"
    assert specs[-1].depends_on == list(range(48))
    # a job that gives its chunk size gets fixed chunks the coordinator never cuts
    fixed = get_kind("render").plan(params(frames="1-1200", chunk=10))
    assert all("adaptive" not in s.payload for s in fixed[:-1]) and len(fixed) == 121


@pytest.mark.parametrize("frames, probes, ranges", [
    ("1", 0, 1), ("1-7", 0, 1), ("1-8", 2, 2), ("1-48", 12, 12), ("1-100", 20, 20),
    ("1-240x2", 24, 24),
])
def test_a_short_range_gets_fewer_spread_frames(frames: str, probes: int, ranges: int) -> None:
    specs = get_kind("render").plan(params(frames=frames))
    chunks = [s.payload["frames"] for s in specs[:-1]]
    assert sum(1 for c in chunks if len(c) == 1) >= probes
    assert len(chunks) == probes + ranges
    assert sorted(f for c in chunks for f in c) == params(frames=frames).frame_list()


def test_the_render_kind_cuts_an_adaptive_chunk_and_only_that() -> None:
    kind = get_kind("render")
    specs = kind.plan(params(frames="1-1200"))
    payload = specs[24].payload  # frames 2-50
    assert work_units(kind, payload) == 49
    parts = split_task(kind, payload, 10)
    assert parts is not None
    head, rest = parts
    assert (head.name, head.payload["frames"]) == ("frames 2-11", list(range(2, 12)))
    assert (rest.name, rest.payload["frames"]) == ("frames 12-50", list(range(12, 51)))
    for part in parts:  # the rest of the payload travels unchanged, still adaptive
        assert {k: v for k, v in part.payload.items() if k != "frames"} == \
            {k: v for k, v in payload.items() if k != "frames"}
    assert split_task(kind, payload, 49) is None and split_task(kind, payload, 0) is None
    fixed = kind.plan(params(frames="1-100", chunk=10))[0].payload
    assert work_units(kind, fixed) == 0 and split_task(kind, fixed, 3) is None
    assert work_units(kind, specs[-1].payload) == 0  # the assembly


def test_a_cut_chunk_may_report_only_its_own_frames() -> None:
    kind = get_kind("render")
    head = {"role": "chunk", "frames": [2, 3, 4], "adaptive": True}
    assert allows_output(kind, head, "frames/0003.png")
    assert allows_output(kind, head, "video-frames/0004.png")
    assert not allows_output(kind, head, "frames/0005.png")  # the rest's frame
    assert not allows_output(kind, head, "frames/abc.png")
    assert not allows_output(kind, head, "video-frames/0001.png")
    assert allows_output(kind, head, "preview/latest.jpg")
    assert allows_output(kind, head, "meta/scene.json")
    assert allows_output(kind, {"role": "assemble", "frames": [1]}, "video.mp4")
