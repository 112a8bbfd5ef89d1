"""Packing the open project the way ``client/render_project.py`` does for the CLI and SDK,
with the same two modules, carried into the add-on byte for byte (``_carried/``):
``dependencies.trace()`` lists every file the saved .blend uses (main thread: it reads
``bpy.data``), ``project.plan_project`` lays them out as a project; ``upload`` hashes each
distinct file and sends it only when the coordinator lacks it (any thread: no ``bpy``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ._carried import dependencies, project, units
from .api import Api

MAX_MISSING_LISTED = 10  # missing files named in the refusal


def describe_report(report: project.UploadReport) -> str:
    return (f"uploaded {report.uploaded_files} file(s), "
            f"{units.human_bytes(report.uploaded_bytes)}; {report.skipped_files} already on "
            f"the farm ({units.human_bytes(report.skipped_bytes)})")


def plan_open_file() -> project.ProjectLayout:
    """The layout of the open, saved .blend and every file its scenes use (main thread)."""
    return project.plan_project(dependencies.trace())


def describe_missing(layout: project.ProjectLayout) -> str:
    """The missing files by the paths the user wrote (``//textures/wood.png``)."""
    listed = "; ".join(m.describe() for m in layout.missing[:MAX_MISSING_LISTED])
    more = len(layout.missing) - MAX_MISSING_LISTED
    return listed + (f"; and {more} more" if more > 0 else "")


def upload(api: Api, layout: project.ProjectLayout,
           on_progress: Callable[[str, float], None] | None = None
           ) -> tuple[dict, project.UploadReport]:
    """Hash and upload every distinct file of ``layout`` (HEAD, then PUT only when the
    coordinator lacks it, so a texture shared by many shots is sent once); the manifest
    and what was sent. ``on_progress(text, fraction)`` hears each step."""
    report = project.UploadReport()
    local_files = sorted(set(layout.files.values()))
    sizes = {local: os.path.getsize(local) for local in local_files}
    total = max(1, sum(sizes.values()))
    done = [0]

    def tell(text: str) -> None:
        if on_progress is not None:
            on_progress(text, min(1.0, done[0] / total))

    hashes: dict[str, str] = {}
    for number, local in enumerate(local_files, start=1):
        name = os.path.basename(local)
        tell(f"hashing {name} ({number}/{len(local_files)})")
        sha = hashes[local] = project.sha256_file(local)
        if api.has_blob(sha):
            report.skipped_files += 1
            report.skipped_bytes += sizes[local]
            done[0] += sizes[local]
            continue
        start = done[0]

        def sent(count: int, name: str = name, number: int = number,
                 start: int = start, size: int = sizes[local]) -> None:
            done[0] += count
            tell(f"uploading {name} ({number}/{len(local_files)}, "
                 f"{units.human_bytes(done[0] - start)} of {units.human_bytes(size)})")

        api.put_blob(local, sha, on_bytes=sent)
        done[0] = start + sizes[local]
        report.uploaded_files += 1
        report.uploaded_bytes += sizes[local]
    tell("uploaded")
    return layout.manifest(hashes), report
