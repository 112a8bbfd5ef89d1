"""A render task's log in words: the ``PILOT_*`` lines the render script speaks to the
worker are shown as what they mean (a finished frame, the scene, a missing file, a refusal)
or not at all (progress, previews); Blender's own lines stay as they are."""

from __future__ import annotations

import json

from parallel_pilot.kinds.render.chunk import log_line

SCENE = {"scene": "Scene", "engine": "CYCLES", "fps": 24.0, "output_size": [320, 180],
         "samples": 16, "format": "PNG", "color_depth": "8", "camera": "Camera",
         "resolution": [640, 360, 50]}


def test_protocol_lines_in_words() -> None:
    assert log_line("PILOT_FRAME_DONE 12 3.412 /tmp/task-3/frames/0012.png", 2, 5) == \
        "frame 12 done in 3.4 s (2/5)"
    assert log_line(f"PILOT_SCENE {json.dumps(SCENE)}", 1, 5) == \
        "scene Scene: Cycles 320x180, 24 fps, 16 samples, PNG 8-bit, camera Camera"
    eevee = {**SCENE, "engine": "BLENDER_EEVEE_NEXT", "samples": None, "fps": 29.97,
             "camera": None}
    assert log_line(f"PILOT_SCENE {json.dumps(eevee)}", 1, 1) == \
        "scene Scene: EEVEE 320x180, 29.97 fps, PNG 8-bit"
    assert log_line("PILOT_DEVICE CUDA: NVIDIA H200", 1, 1) == "rendering on CUDA: NVIDIA H200"
    assert log_line("PILOT_FILE_OUTPUT depth/0001.exr /tmp/t/file-output/depth/0001.exr",
                    1, 1) == "File Output node wrote depth/0001.exr"


def test_reasons_stay_readable() -> None:
    missing = {"path": "//tex/wood.png", "used_by": 'image "wood"', "blend": "shot.blend",
               "why": "missing"}
    assert log_line(f"PILOT_MISSING {json.dumps(missing)}", 1, 1) == \
        'missing: //tex/wood.png (image "wood", in shot.blend: not in the project)'
    assert log_line("PILOT_ERROR invalid frame(s) 40 outside the frame range 1-24", 1, 1) == \
        "refused: frame(s) 40 outside the frame range 1-24"
    assert log_line("PILOT_ERROR render frame 3: out of memory", 1, 1) == \
        "render failed: frame 3: out of memory"


def test_lines_that_only_feed_the_worker_are_not_logged() -> None:
    for line in ("PILOT_STATS 3 Fra:3 | Sample 8/16", "PILOT_PREVIEW /tmp/p/preview-0003.jpg",
                 "PILOT_VIDEO_FRAME 3 /tmp/f/video-0003.png"):
        assert log_line(line, 1, 1) is None


def test_blenders_own_lines_and_unreadable_ones_stay() -> None:
    blender = "Fra:1 Mem:12.00M (Peak 14.00M) | Time:00:00.21 | Rendering 1 / 64 samples"
    assert log_line(blender, 1, 1) == blender
    assert log_line("Saved: '/tmp/x.png'", 1, 1) == "Saved: '/tmp/x.png'"
    assert log_line("PILOT_FRAME_DONE garbled", 1, 1) == "PILOT_FRAME_DONE garbled"
    assert log_line("PILOT_SOMETHING_NEW 1 2", 1, 1) == "PILOT_SOMETHING_NEW 1 2"
