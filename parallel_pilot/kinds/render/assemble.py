"""Rendered frames into a video and a zip: matching the job's frame outputs to the frames
it asked for (every one exactly once), H.264 encoding with ffmpeg, and zipping.

ffmpeg is the one ``imageio-ffmpeg`` ships (static, with libx264) or else a ``ffmpeg`` on
PATH. The video is H.264 in yuv420p (what every player plays), with its width and height
rounded down to even numbers (yuv420p needs them), one video frame per rendered frame, in
the order the frames were asked for. Frames rendered to OpenEXR (linear light) come with
8-bit PNG copies under ``video-frames/`` that Blender made with the scene's colours; the
video is made from those, the zip from the EXR files.
"""

from __future__ import annotations

import re
import shutil
import threading
import zipfile
from fractions import Fraction
from pathlib import Path

from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.process import run_process

FRAMES_PREFIX = "frames/"
# 8-bit PNGs of frames rendered to OpenEXR, with the scene's colours, to make the video from
VIDEO_FRAMES_PREFIX = "video-frames/"
FRAME_DIGITS = 4  # frames/0001.png; wider numbers simply grow
VIDEO_CRF = 18  # x264 quality (lower is better; 18 looks lossless to most eyes)
VIDEO_PRESET = "veryfast"  # x264 speed/size trade-off
FPS_MAX_DENOMINATOR = 1001  # 23.976 fps is written as 24000/1001
FFMPEG_TIMEOUT_SECONDS = 3600.0  # the longest an encode may take
MAX_LISTED_FRAMES = 20  # frame numbers quoted in an error message

_FRAME_NAME = re.compile(r"^(\d+)\.([A-Za-z0-9]+)$")


class VideoFailed(Exception):
    """ffmpeg could not make the video; the message quotes its output."""


def frame_output_path(frame: int, ext: str, prefix: str = FRAMES_PREFIX) -> str:
    """The job output path of a rendered frame: ``frames/0012.png``."""
    return f"{prefix}{frame:0{FRAME_DIGITS}d}.{ext}"


def format_frames(frames: list[int], limit: int = MAX_LISTED_FRAMES) -> str:
    """[1, 2, 3, 7, 9, 10] -> "1-3,7,9-10" (runs of consecutive numbers collapsed)."""
    runs: list[str] = []
    start = prev = None
    for frame in sorted(set(frames)):
        if prev is not None and frame == prev + 1:
            prev = frame
            continue
        if start is not None:
            runs.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = frame
    if start is not None:
        runs.append(f"{start}-{prev}" if prev != start else f"{start}")
    if len(runs) > limit:
        return ",".join(runs[:limit]) + f",… ({len(runs) - limit} more)"
    return ",".join(runs)


def match_frames(outputs: dict[str, str], expected: list[int],
                 prefix: str = FRAMES_PREFIX) -> list[tuple[int, str, str]]:
    """(frame, output path, SHA-256) for each expected frame under ``prefix``, in the
    expected order.

    Raises ``InvalidInput`` when a frame is missing or present under two names
    (``frames/0001.png`` and ``frames/1.png``): a video must have each frame exactly once.
    Frames that were not asked for are left out."""
    by_frame: dict[int, list[tuple[str, str]]] = {}
    for path, sha in outputs.items():
        match = _FRAME_NAME.match(path.removeprefix(prefix)) if path.startswith(prefix) \
            else None
        if match:
            by_frame.setdefault(int(match.group(1)), []).append((path, sha))
    missing = [f for f in expected if f not in by_frame]
    duplicated = [f for f in expected if len(by_frame.get(f, ())) > 1]
    problems = []
    if missing:
        problems.append(f"{len(missing)} frame(s) missing under {prefix}: "
                        f"{format_frames(missing)}")
    if duplicated:
        names = "; ".join(", ".join(sorted(p for p, _ in by_frame[f]))
                          for f in duplicated[:5])
        problems.append(f"{len(duplicated)} frame(s) present more than once: {names}")
    if problems:
        raise InvalidInput("cannot assemble the video: " + "; ".join(problems))
    return [(f, *by_frame[f][0]) for f in expected]


def find_ffmpeg() -> str | None:
    """imageio-ffmpeg's ffmpeg (static, with libx264), else ``ffmpeg`` on PATH."""
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


def fps_argument(fps: float) -> str:
    """ffmpeg's frame rate as an exact fraction: 24 -> "24", 23.976... -> "24000/1001"."""
    value = Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)
    if value <= 0:
        raise InvalidInput(f"the frame rate must be positive, not {fps}")
    return str(value.numerator) if value.denominator == 1 else str(value)


def encode_command(ffmpeg: str, pattern: Path, fps: float, out: Path) -> list[str]:
    """argv of an H.264/yuv420p encode of ``pattern`` (``dir/%06d.ext``, numbered from 0)."""
    rate = fps_argument(fps)
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-framerate", rate, "-start_number", "0", "-i", str(pattern),
        "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2,format=yuv420p",
        "-c:v", "libx264", "-preset", VIDEO_PRESET, "-crf", str(VIDEO_CRF),
        "-pix_fmt", "yuv420p", "-r", rate, "-movflags", "+faststart", str(out),
    ]


def encode_video(frames: list[Path], out: Path, *, ext: str, fps: float, ffmpeg: str,
                 workdir: Path, stop_event: threading.Event | None = None) -> int:
    """Encode ``frames`` (image files of type ``ext``, whatever their names) in this order
    into ``out``; returns the number of video frames, checked to equal the number given."""
    if not frames:
        raise InvalidInput("no frames to make a video of")
    ext = ext.lower()
    sequence = workdir / "sequence"
    sequence.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        link = sequence / f"{index:06d}.{ext}"
        try:
            link.symlink_to(frame.resolve())
        except OSError:  # no symlinks here (some filesystems): copy instead
            shutil.copyfile(frame, link)
    stop = stop_event or threading.Event()
    # the pattern is relative: a '%' in the working directory's path would break it
    proc = run_process(encode_command(ffmpeg, Path(f"%06d.{ext}"), fps, out.resolve()),
                       cwd=sequence, env={}, stop_event=stop,
                       timeout_seconds=FFMPEG_TIMEOUT_SECONDS)
    if proc.stopped:
        return 0
    if proc.exit_code != 0 or not out.is_file():
        raise VideoFailed(f"ffmpeg could not encode the video (exit code {proc.exit_code}): "
                          f"{_last_lines(proc.stderr)}")
    count = count_video_frames(ffmpeg, out, workdir=workdir, stop_event=stop)
    if count != len(frames) and not stop.is_set():
        raise VideoFailed(f"the video has {count} frames, not {len(frames)}")
    return count


def count_video_frames(ffmpeg: str, video: Path, *, workdir: Path,
                       stop_event: threading.Event | None = None) -> int:
    """Frames in the first video stream, counted by remuxing to nothing (no decoding)."""
    proc = run_process(
        [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-i",
         str(video), "-map", "0:v:0", "-c", "copy", "-f", "null", "-progress", "pipe:1", "-"],
        cwd=workdir, env={}, stop_event=stop_event or threading.Event(),
        timeout_seconds=FFMPEG_TIMEOUT_SECONDS,
    )
    counts = re.findall(r"^frame=(\d+)", proc.stdout, re.MULTILINE)
    if proc.exit_code != 0 or not counts:
        raise VideoFailed(f"ffmpeg could not read back {video.name}: "
                          f"{_last_lines(proc.stderr)}")
    return int(counts[-1])


def zip_frames(frames: list[tuple[str, Path]], out: Path) -> int:
    """Write (name in the zip, file) pairs to ``out``, stored without recompression (the
    image formats are compressed already); returns the number of entries."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, path in frames:
            zf.write(path, arcname=name)
    return len(frames)


def _last_lines(text: str, count: int = 10) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:]) or "(no output)"
