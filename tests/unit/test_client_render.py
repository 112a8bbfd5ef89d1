"""The client side of rendering without a coordinator: which scene facts go with a job,
and where ``pilot render --out`` puts each output."""

from __future__ import annotations

from pathlib import Path

from parallel_pilot.client.cli.render import render_destinations
from parallel_pilot.client.render_project import scene_facts as _scene_facts
from parallel_pilot.core.protocol import OutputInfo

INFO = {"scene": "Main", "scenes": [
    {"scene": "Main", "fps": 24.0, "frame_start": 1, "frame_end": 48, "frame_step": 1,
     "cameras": ["Camera", "Top"]},
    {"scene": "Alt", "fps": 30.0, "frame_start": 10, "frame_end": 20, "frame_step": 2,
     "cameras": []},
]}


def test_scene_facts_follow_the_chosen_scene() -> None:
    assert _scene_facts(INFO, None) == {
        "scene_names": ["Main", "Alt"], "scene_frame_start": 1, "scene_frame_end": 48,
        "scene_fps": 24.0, "scene_cameras": ["Camera", "Top"]}
    alt = _scene_facts(INFO, "Alt")
    assert (alt["scene_frame_start"], alt["scene_fps"], alt["scene_cameras"]) == (10, 30.0, [])
    assert alt["default_frames"] == "10-20x2"
    # an unknown scene keeps the default scene's range, so only the name is refused
    assert _scene_facts(INFO, "Nope")["scene_frame_end"] == 48


def output(path: str) -> OutputInfo:
    return OutputInfo(path=path, sha256="0" * 64, size=1, task_id=None)


OUTPUTS = [output(p) for p in ("frames/0002.png", "frames/0005.png", "preview/latest.jpg",
                               "meta/scene.json", "video.mp4", "frames.zip")]


def test_out_mp4_takes_the_video_and_frames_beside_it(tmp_path: Path) -> None:
    pairs = render_destinations(OUTPUTS, tmp_path / "shot.mp4")
    assert {o.path: d for o, d in pairs} == {
        "video.mp4": tmp_path / "shot.mp4",
        "frames/0002.png": tmp_path / "shot_frames" / "0002.png",
        "frames/0005.png": tmp_path / "shot_frames" / "0005.png",
    }


def test_out_dir_takes_video_zip_and_frames(tmp_path: Path) -> None:
    pairs = render_destinations(OUTPUTS, tmp_path / "out")
    assert sorted(str(d.relative_to(tmp_path / "out")) for _, d in pairs) == [
        "frames.zip", "frames/0002.png", "frames/0005.png", "video.mp4"]
