"""``pilot render``: upload a .blend, render it on the workers, fetch the video and frames.

While it waits it draws frames done/total (the job's ``frames/`` outputs), active workers
and the ETA. ``--out X.mp4`` puts the video at ``X.mp4`` and the frames in ``X_frames/``;
``--out DIR`` (default ``render-<job>``) gets ``video.mp4``, ``frames.zip`` and
``frames/NNNN.<ext>``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from parallel_pilot.client.cli.common import (
    EXIT_ERROR,
    UsageFailure,
    connection_options,
    console,
    duration,
    err_console,
    get_client,
    print_json,
    submit_options,
)
from parallel_pilot.client.job_files import safe_destination
from parallel_pilot.client.render_project import UploadReport, describe_missing
from parallel_pilot.client.sdk import Client
from parallel_pilot.core.project import ProjectLayout
from parallel_pilot.core.protocol import JobInfo, OutputInfo
from parallel_pilot.core.states import JobState
from parallel_pilot.core.units import human_bytes
from parallel_pilot.errors import InvalidInput

FRAMES_PREFIX = "frames/"  # where a chunk task puts each frame it rendered
VIDEO_OUTPUT = "video.mp4"  # the assembly task's video
ZIP_OUTPUT = "frames.zip"  # the assembly task's zip of all frames
ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH")
FORMATS = ("PNG", "JPEG", "OPEN_EXR", "OPEN_EXR_MULTILAYER", "TIFF")
DEVICES = ("cpu", "gpu", "any")
FILE_OUTPUT_PREFIX = "file-output/"  # what the scene's File Output nodes wrote


@click.command("render")
@click.argument("scene", type=click.Path(path_type=Path))
@click.option("--frames", help="Frames to render: 1-240, 1-10,20-30 or 1-240x2 "
              "(default: the scene's range).")
@click.option("--chunk", type=click.IntRange(1, 1000), help="Frames per task.")
@click.option("--engine", type=click.Choice(ENGINES, case_sensitive=False),
              help="Render engine override.")
@click.option("--samples", type=click.IntRange(1, 1_000_000), help="Samples override.")
@click.option("--resolution", type=click.IntRange(1, 100), metavar="PCT",
              help="Resolution percentage.")
@click.option("--format", "image_format", type=click.Choice(FORMATS, case_sensitive=False),
              help="Frame format (default: the scene's own; PNG when it outputs video).")
@click.option("--color-depth", type=click.Choice(("8", "16", "32")),
              help="Bits per channel (default: the scene's own).")
@click.option("--device", type=click.Choice(DEVICES, case_sensitive=False), default="any",
              show_default=True, help="cpu, gpu (only workers with a GPU Cycles renders "
              "on) or any (a GPU where the worker has one).")
@click.option("--camera", help="Camera to render from.")
@click.option("--scene", "scene_name", help="Scene of the file to render.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True, max=1000),
              help="Video frame rate (default: the scene's).")
@click.option("--allow-missing-files", is_flag=True,
              help="Render even when textures or other files the scene uses are missing.")
@click.option("--out", "out", type=click.Path(path_type=Path),
              help="X.mp4 for the video (frames in X_frames/), or a folder "
              "(default: render-<job>).")
@click.option("--name", help="Job name (default: the file name).")
@submit_options
@connection_options
def render_command(scene: Path, frames: str | None, chunk: int | None, engine: str | None,
                   samples: int | None, resolution: int | None, image_format: str | None,
                   color_depth: str | None, device: str, camera: str | None,
                   scene_name: str | None, fps: float | None,
                   allow_missing_files: bool, out: Path | None, name: str | None,
                   priority: int, no_wait: bool, wait_timeout: float | None,
                   as_json: bool, requires: dict[str, Any]) -> None:
    """Render the Blender project of SCENE (a .blend) on the workers and download the
    video and frames.

    Blender here opens the file once (scripts off) and finds every file it uses: linked
    libraries, textures and UDIM tiles, image sequences, movie clips, sounds, fonts,
    caches (point caches, Alembic/USD, VDB, fluid and geometry-node bakes). They travel
    with the job as a project, each uploaded only if the coordinator lacks it, and on the
    worker every path resolves inside the project. A missing file stops the submit,
    named as you wrote it, unless --allow-missing-files.

    \b
    pilot render shots/shot.blend --frames 1-240 --out shot.mp4
    """
    if not scene.is_file():
        raise UsageFailure(f"no such file: {scene}")
    client = get_client()
    packing = PackingReporter(show=not as_json)
    if not as_json:
        err_console.print(f"finding the files {scene.name} uses…")
    try:
        job = client.submit_render(
            scene, frames=frames, chunk=chunk, engine=engine and engine.upper(),
            samples=samples, resolution=resolution,
            format=image_format and image_format.upper(), color_depth=color_depth,
            device=device.lower(), camera=camera, scene_name=scene_name, fps=fps,
            allow_missing_files=allow_missing_files, name=name, priority=priority,
            on_event=packing, requirements=requires,
        )
    except InvalidInput as exc:
        raise UsageFailure(exc.message) from None
    finally:
        packing.close()
    if no_wait:
        if as_json:
            print_json({"job": job.id, "state": str(job.state), "tasks": job.tasks_total,
                        **packing.sent()})
        else:
            console.print(f"submitted job {job.id} ({job.tasks_total} tasks); follow it with "
                          f"pilot wait {job.id}")
        return
    if not as_json:
        cut = (f"{job.tasks_total - 1} chunk(s)" if job.params.get("chunk") else
               "chunks sized to each worker (spread frames first)")
        err_console.print(f"submitted job {job.id}: {_frame_count(job)} frames in {cut}, "
                          "then assembly")
    job = follow_render(client, job, timeout=wait_timeout, show=not as_json)
    files: list[Path] = []
    if job.state == JobState.COMPLETED:
        files = download_render(client, job.id, out or Path(f"render-{job.id}"))
    if as_json:
        print_json({"job": job.id, "state": str(job.state), "tasks": job.tasks_total,
                    "error": job.error, "files": [str(f) for f in files], **packing.sent()})
    elif job.state == JobState.COMPLETED:
        video = next((f for f in files if f.suffix == ".mp4"), None)
        console.print(f"job {job.id} completed in {_took(job)}: {len(files)} file(s); "
                      f"video: {video}")
    else:
        err_console.print(f"[red]job {job.id} {job.state}[/]: {job.error or 'no reason given'}")
        err_console.print(f"details: pilot show {job.id}")
    if job.state != JobState.COMPLETED:
        raise SystemExit(EXIT_ERROR)


class PackingReporter:
    """Prints what packing the project does (``Client.submit_render``'s ``on_event``):
    the project found, missing files let through, an upload bar over the bytes."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.report: UploadReport | None = None
        self._progress: Progress | None = None
        self._bar: TaskID | None = None

    def __call__(self, what: str, detail: Any) -> None:
        if what == "report":
            self.report = detail
        if not self.show:
            return
        if what == "untraced":
            err_console.print(f"[yellow]warning[/]: {detail}")
        elif what == "layout":
            self._layout(detail)
        elif what in ("uploaded", "skipped") and self._progress is not None:
            assert self._bar is not None
            self._progress.advance(self._bar, detail[1])
        elif what == "report":
            self.close()
            err_console.print(f"uploaded {detail.uploaded_files} file(s), "
                              f"{human_bytes(detail.uploaded_bytes)}; "
                              f"{detail.skipped_files} already on the coordinator")

    def _layout(self, layout: ProjectLayout) -> None:
        err_console.print(f"project {layout.root}: {len(layout.files)} file(s), "
                          f"{human_bytes(layout.total_bytes())}; rendering {layout.main}")
        if layout.missing:
            err_console.print(f"[yellow]warning[/]: rendering without "
                              f"{len(layout.missing)} missing file(s):\n  "
                              f"{describe_missing(layout)}")
        self._progress = Progress(TextColumn("hashing and uploading"), BarColumn(),
                                  DownloadColumn(), console=err_console, transient=True,
                                  disable=not err_console.is_terminal)
        self._progress.start()
        self._bar = self._progress.add_task("upload", total=layout.total_bytes() or None)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def sent(self) -> dict[str, int]:
        return self.report.as_dict() if self.report is not None else {}


def _took(job: JobInfo) -> str:
    if job.started_at is None or job.finished_at is None:
        return "-"
    return duration(job.finished_at - job.started_at)


def frames_done(client: Client, job_id: int) -> int:
    """Frames of the job uploaded so far."""
    return sum(1 for o in client.outputs(job_id) if o.path.startswith(FRAMES_PREFIX))


def follow_render(client: Client, job: JobInfo, *, timeout: float | None = None,
                  show: bool = True, check: Callable[[], None] | None = None) -> JobInfo:
    """Wait for the render job, drawing frames done/total, active workers and the ETA.

    ``check`` runs at every poll and may raise to give up (e.g. the local workers died)."""
    total = _frame_count(job)
    if not show:
        return client.wait(job.id, timeout=timeout,
                           on_update=None if check is None else lambda info: check())
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} frames"),
        TextColumn("{task.fields[workers]} workers"), TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(), console=err_console, transient=False,
    )
    with progress:
        bar = progress.add_task(f"job {job.id}", total=total or None, workers=0, eta="ETA -")

        def update(info: JobInfo) -> None:
            if check is not None:
                check()
            eta = "ETA -" if info.eta_seconds is None else f"ETA {duration(info.eta_seconds)}"
            if info.state.finished:
                eta = ""  # the description already says how it ended
            progress.update(bar, completed=frames_done(client, job.id),
                            description=f"job {job.id} {info.state}",
                            workers=info.active_workers, eta=eta)

        return client.wait(job.id, on_update=update, timeout=timeout)


def _frame_count(job: JobInfo) -> int:
    """Frames the job asked for, from its parameters (0 when they cannot be read)."""
    from parallel_pilot.kinds.render.kind import expand_frames

    try:
        return len(expand_frames(str(job.params.get("frames") or "")))
    except ValueError:
        return 0


def render_destinations(outputs: list[OutputInfo], out: Path) -> list[tuple[OutputInfo, Path]]:
    """Where each wanted output of a render job goes for ``--out``: an ``.mp4`` path takes
    the video, its frames go to ``<stem>_frames/``; a folder takes the video, the zip and
    ``frames/``. Previews and metadata stay on the coordinator."""
    pairs: list[tuple[OutputInfo, Path]] = []
    if out.suffix.lower() == ".mp4":
        frames_dir = out.with_name(f"{out.stem}_frames")
        for output in outputs:
            if output.path == VIDEO_OUTPUT:
                pairs.append((output, out))
            elif output.path.startswith(FRAMES_PREFIX):
                pairs.append((output, safe_destination(
                    frames_dir, output.path.removeprefix(FRAMES_PREFIX))))
            elif output.path.startswith(FILE_OUTPUT_PREFIX):
                pairs.append((output, safe_destination(out.with_name(
                    f"{out.stem}_file_output"), output.path.removeprefix(FILE_OUTPUT_PREFIX))))
        return pairs
    for output in outputs:
        if output.path in (VIDEO_OUTPUT, ZIP_OUTPUT) or output.path.startswith(
                (FRAMES_PREFIX, FILE_OUTPUT_PREFIX)):
            pairs.append((output, safe_destination(out, output.path)))
    return pairs


def download_render(client: Client, job_id: int, out: Path) -> list[Path]:
    """Fetch the video and frames of a completed render job (see ``render_destinations``)."""
    pairs = render_destinations(client.outputs(job_id), out)
    with Progress(TextColumn("download"), BarColumn(), console=err_console,
                  transient=True) as progress:
        bar = progress.add_task("download", total=sum(o.size for o, _ in pairs) or None)
        for output, dest in pairs:
            client.connection.download_blob(output.sha256, dest,
                                             on_progress=lambda n: progress.advance(bar, n))
    return [dest for _, dest in pairs]
