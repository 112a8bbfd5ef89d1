"""Every output setting renders as the file asks: the scene's own format and depth (16-bit
TIFF), multilayer OpenEXR, 16-bit PNG; its colour management kept; an 8-bit copy for the
video where the frames are not 8/16-bit PNG or JPEG; File Output nodes written inside the
task and sent back as ``file-output/``. A chunk runs in-process with real Blender (bpy)
over the fake job of test_render_worker.py."""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.blender_projects import local_render, make, mean_abs_difference
from tests.integration.test_render_worker import FakeJob, plan_job, run_task

ONE_LEVEL = 1 / 255  # one step of an 8-bit channel


@pytest.fixture(scope="module")
def formats_blend(tmp_path_factory: pytest.TempPathFactory,
                  requirement: Callable[[str | None], None]) -> Path:
    requirement(None if importlib.util.find_spec("bpy") else
                "the bpy package is not installed (pip install 'parallel-pilot[render]')")
    return make("formats", tmp_path_factory.mktemp("formats") / "p")


def image_facts(path: Path) -> tuple[str, str, int]:
    """(file format, type, bits per pixel) of an image as Blender reads it."""
    script = ("import bpy, sys\n"
              "im = bpy.data.images.load(sys.argv[-1])\n"
              "im.pixels[0]  # read the file: its format is known once it is loaded\n"
              "print(im.file_format, im.type, im.depth)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], check=True, text=True,
                          capture_output=True, timeout=120)
    fmt, kind, depth = proc.stdout.strip().splitlines()[-1].split()
    return fmt, kind, int(depth)


def tiff_bits_per_sample(path: Path) -> int:
    """BitsPerSample (tag 258) of a little- or big-endian TIFF's first image."""
    data = path.read_bytes()
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    for i in range(count):
        tag, _type, n, value = struct.unpack_from(order + "HHII", data, ifd + 2 + 12 * i)
        if tag == 258:
            where = value if n * 2 > 4 else ifd + 2 + 12 * i + 8
            return int(struct.unpack_from(order + "H", data, where)[0])
    raise AssertionError("no BitsPerSample in the TIFF")


def outputs(job: FakeJob, prefix: str) -> list[str]:
    return sorted(p for p in job.outputs if p.startswith(prefix))


def test_the_scenes_own_format_and_depth(formats_blend: Path, tmp_path: Path) -> None:
    job = FakeJob(tmp_path)
    run_task(job, 0, plan_job(job, formats_blend, frames="1")[0])
    assert outputs(job, "frames/") == ["frames/0001.tif"]
    frame = job.blobs[job.outputs["frames/0001.tif"]]
    assert image_facts(frame)[0] == "TIFF" and tiff_bits_per_sample(frame) == 16
    assert outputs(job, "video-frames/") == ["video-frames/0001.png"]  # 8-bit, for the video


def test_multilayer_exr(formats_blend: Path, tmp_path: Path) -> None:
    job = FakeJob(tmp_path)
    run_task(job, 0, plan_job(job, formats_blend, frames="1",
                              format="OPEN_EXR_MULTILAYER")[0])
    frame = job.blobs[job.outputs["frames/0001.exr"]].read_bytes()
    assert frame[:4] == b"\x76\x2f\x31\x01"  # OpenEXR
    header = frame[:65536]
    assert b"ViewLayer.Combined.R" in header and b"ViewLayer.Depth.Z" in header  # layers
    assert outputs(job, "video-frames/") == ["video-frames/0001.png"]


def test_16_bit_png_keeps_the_scenes_colours(formats_blend: Path, tmp_path: Path) -> None:
    job = FakeJob(tmp_path)
    run_task(job, 0, plan_job(job, formats_blend, frames="2", format="PNG",
                              color_depth="16")[0])
    frame = job.blobs[job.outputs["frames/0002.png"]]
    assert frame.read_bytes()[24] == 16  # the PNG header's bit depth
    assert outputs(job, "video-frames/") == []  # ffmpeg reads 16-bit PNG itself
    run_task(job, 1, plan_job(job, formats_blend, frames="2", format="PNG")[0])
    reference = local_render(formats_blend, 2, tmp_path / "home.png")  # AgX, High Contrast
    difference = mean_abs_difference(reference, job.blobs[job.outputs["frames/0002.png"]])
    assert difference < ONE_LEVEL / 10


def test_a_depth_the_format_lacks_is_refused(formats_blend: Path, tmp_path: Path) -> None:
    from parallel_pilot.errors import InvalidInput

    job = FakeJob(tmp_path)
    with pytest.raises(InvalidInput, match="JPEG has no 16-bit colour depth"):
        run_task(job, 0, plan_job(job, formats_blend, frames="1", format="JPEG",
                                  color_depth="16")[0])


def test_file_output_nodes_write_inside_the_task_and_come_back(formats_blend: Path,
                                                              tmp_path: Path) -> None:
    elsewhere = Path(f"{formats_blend.parent}_elsewhere")
    shutil.rmtree(elsewhere, ignore_errors=True)  # a render "at home" writes there
    job = FakeJob(tmp_path)
    run_task(job, 0, plan_job(job, formats_blend, frames="1")[0])
    assert not elsewhere.exists()  # the file's absolute folder got nothing
    (passes,) = outputs(job, "file-output/")
    assert passes.startswith("file-output/File_Output/pass_") and passes.endswith(".exr")
