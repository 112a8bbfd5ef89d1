"""Assembly's pure parts: matching frame outputs, frame lists, ffmpeg's arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.render.assemble import (
    encode_command,
    format_frames,
    fps_argument,
    frame_output_path,
    match_frames,
)


def sha(n: int) -> str:
    return f"{n:064x}"


def test_frame_paths_and_lists() -> None:
    assert frame_output_path(7, "png") == "frames/0007.png"
    assert frame_output_path(12345, "exr") == "frames/12345.exr"
    assert format_frames([1, 2, 3, 7, 9, 10]) == "1-3,7,9-10"
    assert format_frames([5]) == "5"
    assert format_frames([]) == ""
    assert format_frames(list(range(1, 200, 2)), limit=3) == "1,3,5,… (97 more)"


def test_match_frames_in_the_order_asked() -> None:
    outputs = {frame_output_path(f, "png"): sha(f) for f in (1, 3, 5, 7)}
    outputs["preview/latest.jpg"] = sha(99)
    outputs["frames/0009.png"] = sha(9)  # not asked for: left out
    assert match_frames(outputs, [1, 3, 5, 7]) == [
        (1, "frames/0001.png", sha(1)), (3, "frames/0003.png", sha(3)),
        (5, "frames/0005.png", sha(5)), (7, "frames/0007.png", sha(7))]


def test_missing_frames_are_an_error() -> None:
    outputs = {frame_output_path(f, "png"): sha(f) for f in (1, 2, 6)}
    with pytest.raises(InvalidInput, match=r"3 frame\(s\) missing under frames/: 3-5"):
        match_frames(outputs, [1, 2, 3, 4, 5, 6])


def test_video_frames_under_their_own_prefix() -> None:
    outputs = {"frames/0001.exr": sha(1), "video-frames/0001.png": sha(2)}
    assert match_frames(outputs, [1], prefix="video-frames/") == [
        (1, "video-frames/0001.png", sha(2))]
    assert match_frames(outputs, [1]) == [(1, "frames/0001.exr", sha(1))]


def test_duplicated_frames_are_an_error() -> None:
    outputs = {"frames/0001.png": sha(1), "frames/1.png": sha(2), "frames/0002.png": sha(3)}
    with pytest.raises(InvalidInput, match=r"present more than once: frames/0001.png, "
                                           r"frames/1.png"):
        match_frames(outputs, [1, 2])


@pytest.mark.parametrize("fps, text", [(24, "24"), (25.0, "25"), (24000 / 1001, "24000/1001"),
                                       (30000 / 1001, "30000/1001"), (12.5, "25/2")])
def test_fps_argument(fps: float, text: str) -> None:
    assert fps_argument(fps) == text


def test_fps_must_be_positive() -> None:
    with pytest.raises(InvalidInput):
        fps_argument(0)


def test_encode_command_is_h264_yuv420p_with_even_dimensions() -> None:
    argv = encode_command("ffmpeg", Path("/w/seq/%06d.png"), 24, Path("/w/video.mp4"))
    assert argv[0] == "ffmpeg"
    assert argv[argv.index("-c:v") + 1] == "libx264"
    assert argv[argv.index("-pix_fmt") + 1] == "yuv420p"
    assert "scale=trunc(iw/2)*2:trunc(ih/2)*2" in argv[argv.index("-vf") + 1]
    assert argv[argv.index("-framerate") + 1] == "24"
    assert argv[argv.index("-start_number") + 1] == "0"
    assert argv[-1] == "/w/video.mp4"
