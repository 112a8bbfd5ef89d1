"""Names of a job's files: local paths named relative to the current directory when
uploaded; which outputs a download fetches, and each kept inside its destination folder."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from parallel_pilot.core.protocol import OutputInfo
from parallel_pilot.errors import InvalidInput

# Outputs a kind makes for the farm rather than for the user, which a download leaves out
# unless asked for everything: a render's dashboard preview (``preview/latest.jpg``, one
# per chunk), its chunks' scene facts (``meta/``) and the 8-bit copies of EXR/TIFF frames
# the video is made from (``video-frames/``); kinds/render/chunk.py writes them.
FARM_OUTPUTS: dict[str, tuple[str, ...]] = {"render": ("preview/", "meta/", "video-frames/")}


def name_files(files: Mapping[str, Path] | Iterable[Path]) -> dict[str, Path]:
    """Job file names (relative, '/'-separated) for local files; every file must exist.

    Given paths are named as written relative to the current directory
    (``data/x.csv`` stays ``data/x.csv``; an absolute path inside the current directory is
    made relative). A path that would escape the working directory is refused.
    """
    if isinstance(files, Mapping):
        pairs = [(str(k), Path(v)) for k, v in files.items()]
    else:
        pairs = [(_relative_name(Path(p)), Path(p)) for p in files]
    named: dict[str, Path] = {}
    for job_name, path in pairs:
        job_name = check_job_file_name(job_name)
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}")
        if job_name in named and named[job_name].resolve() != path.resolve():
            raise InvalidInput(f"two different files would both be named {job_name!r}")
        named[job_name] = path
    return named


def check_job_file_name(name: str) -> str:
    """A job file name: relative, '/'-separated, without '.', '..' or empty parts."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or "\x00" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise InvalidInput(
            f"file name {name!r} must be a relative path inside the working directory "
            "(no '..', no absolute path)"
        )
    return name


def _relative_name(path: Path) -> str:
    if path.is_absolute():
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            raise InvalidInput(
                f"{path} is outside the current directory; run from a directory that "
                "contains it, or pass files as a mapping of name -> path"
            ) from None
    return os.path.normpath(path).replace(os.sep, "/")


def safe_destination(root: Path, relative: str) -> Path:
    """``root/relative``, refusing any path that would land outside ``root``."""
    refused = InvalidInput(f"refusing output path {relative!r}: it would be written "
                           f"outside {root}")
    try:
        check_job_file_name(relative)
    except InvalidInput:
        raise refused from None
    dest = root / relative
    resolved_root = root.resolve()
    if resolved_root not in dest.resolve().parents:
        raise refused
    return dest


def outputs_to_download(kind: str, outputs: Sequence[OutputInfo], *,
                        everything: bool = False) -> tuple[list[OutputInfo], list[OutputInfo]]:
    """The job's outputs a download fetches, and those it leaves out (``FARM_OUTPUTS`` of
    the job's kind, unless ``everything``). Each path comes once: where a listing names a
    path twice (an older coordinator lists every upload), the last one wins, as it does in
    the job's outputs."""
    latest: dict[str, OutputInfo] = {}
    for output in outputs:
        latest.pop(output.path, None)  # re-inserted: the order is that of the last listing
        latest[output.path] = output
    hidden = () if everything else FARM_OUTPUTS.get(kind, ())
    wanted = [o for o in latest.values() if not (hidden and o.path.startswith(hidden))]
    left_out = [o for o in latest.values() if hidden and o.path.startswith(hidden)]
    return wanted, left_out
