"""Reading Blender's output (progress, finished frames, hints) and turning a failed run into
a reason a person can act on. Pure: the lines are what Blender and script.py print."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.render import blender
from parallel_pilot.kinds.render.blender import (
    LOG_TAIL_LINES,
    BlenderFailed,
    BlenderInstall,
    OutputReader,
    can_open,
    failure,
)

BPY = BlenderInstall("module", "/usr/bin/python3", "5.0.1")
OLD = BlenderInstall("executable", "/usr/bin/blender", "3.4.1")


def feed(reader: OutputReader, *lines: str) -> list:
    return [reader.feed(line) for line in lines]


def test_stats_lines_give_frame_and_sample_progress() -> None:
    reader = OutputReader()
    sync, sample, eevee = feed(
        reader,
        "PILOT_STATS 12 Mem: 0M | Synchronizing object | Cube",
        "PILOT_STATS 12 Remaining: 00:00.21 | Mem: 2M | Sample 8/16",
        "PILOT_STATS 3 Rendering 5 / 64 samples",
    )
    assert (sync.what, sync.frame, sync.sample) == ("progress", 12, None)
    assert (sample.frame, sample.sample, sample.samples) == (12, 8, 16)
    assert (eevee.frame, eevee.sample, eevee.samples) == (3, 5, 64)
    assert not reader.tail  # status lines are not log lines


def test_native_blender_progress_lines() -> None:
    reader = OutputReader()
    (event,) = feed(reader, "Fra:7 Mem:15.31M (Peak 15.96M) | Time:00:00.17 | Mem:0.77M, "
                            "Peak:0.77M | Scene, ViewLayer | Sample 3/32")
    assert (event.frame, event.sample, event.samples) == (7, 3, 32)
    (old,) = feed(reader, "Fra:2 Mem:9M | Time:00:01.00 | Path Tracing Sample 4/8")
    assert (old.frame, old.sample) == (2, 4)


def test_script_lines() -> None:
    reader = OutputReader()
    done, preview, scene, error = feed(
        reader,
        "PILOT_FRAME_DONE 12 0.532 /tmp/work dir/frames/0012.png",
        "PILOT_PREVIEW /tmp/w/frames/preview-0012.jpg",
        'PILOT_SCENE {"fps": 24.0, "engine": "CYCLES"}',
        "PILOT_ERROR invalid scene 'Scene' has no camera named 'Side'; its cameras: Camera",
    )
    assert (done.what, done.frame, done.seconds, done.path) == (
        "frame_done", 12, 0.532, "/tmp/work dir/frames/0012.png")
    assert preview.path == "/tmp/w/frames/preview-0012.jpg"
    assert scene.data == {"fps": 24.0, "engine": "CYCLES"}
    assert reader.error == ("invalid", "scene 'Scene' has no camera named 'Side'; "
                                       "its cameras: Camera")
    assert error.what == "error"


def test_tail_keeps_the_last_lines() -> None:
    reader = OutputReader()
    feed(reader, *[f"line {i}" for i in range(100)])
    assert list(reader.tail) == [f"line {i}" for i in range(100 - LOG_TAIL_LINES, 100)]


def test_hints() -> None:
    reader = OutputReader()
    feed(reader,
         "Warning: Path '/home/ann/textures/wood.png' not found",
         "Error: Cannot read file \"/home/ann/lib.blend\": No such file or directory",
         "PILOT_MISSING /home/ann/hdri.exr",
         "Error: Out of memory in CUDA queue enqueue (integrator_shade_surface)",
         "File written by newer Blender binary (500.119), expect loss of data!")
    assert reader.missing == ["/home/ann/textures/wood.png", "/home/ann/lib.blend",
                              "/home/ann/hdri.exr"]
    assert reader.out_of_memory and "Out of memory" in reader.out_of_memory[0]
    assert reader.newer_file == "5.0"


def reason(lines: list[str], *, exit_code: int = 1, install: BlenderInstall = BPY,
           file_version: str | None = "5.0") -> Exception:
    reader = OutputReader()
    feed(reader, *lines)
    return failure(reader, exit_code=exit_code, install=install, file_version=file_version,
                   scene_file="shot.blend")


def test_missing_files_are_not_retryable_and_name_the_users_paths() -> None:
    problem = ('{"path": "//textures/wood.png", "used_by": "image \\"wood.png\\"", '
               '"blend": "shots/shot.blend", "why": "missing"}')
    exc = reason([f"PILOT_MISSING {problem}", "PILOT_MISSING not json at all",
                  "PILOT_ERROR missing 2 file(s) the scene uses are not in the project"],
                 exit_code=3)
    assert isinstance(exc, InvalidInput)
    assert ('//textures/wood.png (image "wood.png", in shots/shot.blend: not in the project)'
            in str(exc))
    assert "not json at all" in str(exc) and "allow_missing_files" in str(exc)


def test_invalid_requests_are_not_retryable() -> None:
    exc = reason(["PILOT_ERROR invalid frame(s) 60 outside the frame range 1-48 of scene "
                  "'Scene'"], exit_code=3)
    assert isinstance(exc, InvalidInput) and "outside the frame range" in str(exc)


def test_a_file_blender_cannot_open() -> None:
    exc = reason(['PILOT_ERROR open Error: File format is not supported in file "x"'],
                 exit_code=4)
    assert isinstance(exc, InvalidInput)
    assert "cannot open shot.blend" in str(exc) and "File format is not supported" in str(exc)


def test_a_file_from_a_newer_blender_is_retryable_elsewhere() -> None:
    exc = reason(["PILOT_ERROR open Error: Cannot read file: not a blend file"],
                 exit_code=4, install=OLD, file_version="5.0")
    assert isinstance(exc, BlenderFailed)
    assert re.search(r"saved by Blender 5\.0, newer than this worker's Blender 3\.4\.1",
                     str(exc))
    assert "needs a worker with Blender 5.0 or later" in str(exc)


def test_newer_file_warning_from_blender_itself() -> None:
    exc = reason(["File written by newer Blender binary (500.119), expect loss of data!",
                  "PILOT_ERROR render frame 1: Error: something broke"], install=OLD,
                 file_version=None)
    assert isinstance(exc, BlenderFailed) and "saved by Blender 5.0" in str(exc)


def test_out_of_memory_and_killed() -> None:
    exc = reason(["Error: Out of memory in CUDA queue"], exit_code=1)
    assert isinstance(exc, BlenderFailed) and "ran out of memory" in str(exc)
    killed = reason(["Fra:1 Mem:9000M"], exit_code=-signal.SIGKILL)
    assert isinstance(killed, BlenderFailed) and "SIGKILL" in str(killed)
    assert "more memory" in str(killed)


def test_crash_and_unknown_exit_quote_the_log() -> None:
    crash = reason(["Writing: /tmp/blender.crash.txt"], exit_code=-signal.SIGSEGV)
    assert isinstance(crash, BlenderFailed) and "crashed (SIGSEGV)" in str(crash)
    assert "last lines of Blender's log:\nWriting: /tmp/blender.crash.txt" in str(crash)
    other = reason(["something odd"], exit_code=7)
    assert "exited with code 7" in str(other) and "something odd" in str(other)
    assert "exit code 1" not in str(other)


@pytest.mark.parametrize("have, need, ok", [
    ("5.0.1", "5.0", True), ("4.2.3", "5.0", False), ("3.4.1", "2.79", True),
    (None, "5.0", True), ("5.0.1", None, True), ("4.5.0", "4.5", True),
])
def test_can_open(have: str | None, need: str | None, ok: bool) -> None:
    assert can_open(have, need) is ok


def test_commands_run_without_a_shell_and_without_autorun(tmp_path: Path) -> None:
    script, job = tmp_path / "s.py", tmp_path / "j.json"
    module = BPY.command(script, job)
    assert module[:4] == ["/usr/bin/python3", "-I", "-u", str(script)]
    assert module[-2:] == ["--", str(job)]
    exe = OLD.command(script, job)
    assert exe[:2] == ["/usr/bin/blender", "-b"]
    assert "--factory-startup" in exe and "--disable-autoexec" in exe
    assert exe[exe.index("--python-exit-code") + 1] == "1"
    assert exe.index("--python") < exe.index("--")


def test_configured_executable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blender, "executable_version", lambda exe: "4.2.0")
    blender.use_blender("/opt/blender-4.2/blender")
    try:
        found = blender.installed_blender()
        assert found == BlenderInstall("executable", "/opt/blender-4.2/blender", "4.2.0")
    finally:
        blender.use_blender(None)
