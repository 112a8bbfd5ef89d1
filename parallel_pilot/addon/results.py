"""What comes back from a render job: the frames (``frames/NNNN.png``…) and the video,
listed for the panel and downloaded next to the .blend. No ``bpy``: runs in a thread."""

from __future__ import annotations

import os
from collections.abc import Callable

from ._carried import project
from .api import Api, ApiError

RESULT_DIRS = ("frames/",)  # output folders a user wants back; meta/ and preview/ are the farm's
RESULT_FILES = ("video.mp4",)  # single outputs a user wants back (frames.zip repeats the frames)


def wanted(path: str) -> bool:
    return path.startswith(RESULT_DIRS) or path in RESULT_FILES


def summary(outputs: list[dict]) -> str:
    """``2 frame(s), video.mp4, frames.zip``: what a finished job gave."""
    paths = sorted({str(o.get("path", "")) for o in outputs})
    frames = sum(p.startswith("frames/") for p in paths)
    singles = [p for p in paths if "/" not in p]
    return ", ".join([f"{frames} frame(s)", *singles])


def download(api: Api, job_id: int, folder: str,
             on_progress: Callable[[str, float], None] | None = None) -> list[str]:
    """Download the job's frames and video into ``folder`` (their paths inside it kept);
    the files written. Output paths are checked like project paths: none leaves
    ``folder``."""
    outputs = [o for o in api.outputs(job_id) if wanted(str(o.get("path", "")))]
    if not outputs:
        raise ApiError(f"job {job_id} has no frames or video to download yet")
    total = max(1, sum(int(o.get("size") or 0) for o in outputs))
    done = [0]

    def sent(count: int) -> None:
        done[0] += count

    written = []
    for number, output in enumerate(sorted(outputs, key=lambda o: o["path"]), start=1):
        path = project.check_project_path(str(output["path"]))
        dest = os.path.join(folder, *path.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if on_progress is not None:
            on_progress(f"downloading {path} ({number}/{len(outputs)})", done[0] / total)
        api.get_blob(str(output["sha256"]), dest, on_bytes=sent)
        written.append(dest)
    if on_progress is not None:
        on_progress(f"downloaded {len(written)} file(s) to {folder}", 1.0)
    return written
