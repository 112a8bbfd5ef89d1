"""``pilot render``: upload a .blend, render it on the workers, fetch the video and frames.

While it waits it draws frames done/total (the job's ``frames/`` outputs), active workers
and the ETA. ``--out X.mp4`` puts the video at ``X.mp4`` and the frames in ``X_frames/``;
``--out DIR`` (default ``render-<job>``) gets ``video.mp4``, ``frames.zip`` and
``frames/NNNN.<ext>``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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
from parallel_pilot.client.sdk import Client
from parallel_pilot.core.protocol import JobInfo, OutputInfo
from parallel_pilot.core.states import JobState
from parallel_pilot.errors import InvalidInput

FRAMES_PREFIX = "frames/"  # where a chunk task puts each frame it rendered
VIDEO_OUTPUT = "video.mp4"  # the assembly task's video
ZIP_OUTPUT = "frames.zip"  # the assembly task's zip of all frames
ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH")
FORMATS = ("PNG", "JPEG", "OPEN_EXR")


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
              help="Frame format (default PNG).")
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
                   camera: str | None, scene_name: str | None, fps: float | None,
                   allow_missing_files: bool, out: Path | None, name: str | None,
                   priority: int, no_wait: bool, wait_timeout: float | None,
                   as_json: bool) -> None:
    """Render the Blender file SCENE on the workers and download the video and frames.

    \b
    pilot render shot.blend --frames 1-240 --out shot.mp4
    """
    if not scene.is_file():
        raise UsageFailure(f"no such file: {scene}")
    client = get_client()
    if not as_json:
        err_console.print(f"checking and uploading {scene.name}…")
    try:
        job = client.submit_render(
            scene, frames=frames, chunk=chunk, engine=engine and engine.upper(),
            samples=samples, resolution=resolution,
            format=image_format and image_format.upper(), camera=camera,
            scene_name=scene_name, fps=fps, allow_missing_files=allow_missing_files,
            name=name, priority=priority,
            on_inspect=None if as_json else _warn_missing,
        )
    except InvalidInput as exc:
        raise UsageFailure(exc.message) from None
    if no_wait:
        if as_json:
            print_json({"job": job.id, "state": str(job.state), "tasks": job.tasks_total})
        else:
            console.print(f"submitted job {job.id} ({job.tasks_total} tasks); follow it with "
                          f"pilot wait {job.id}")
        return
    if not as_json:
        err_console.print(f"submitted job {job.id}: {_frame_count(job)} frames in "
                          f"{job.tasks_total - 1} chunk(s), then assembly")
    job = follow_render(client, job, timeout=wait_timeout, show=not as_json)
    files: list[Path] = []
    if job.state == JobState.COMPLETED:
        files = download_render(client, job.id, out or Path(f"render-{job.id}"))
    if as_json:
        print_json({"job": job.id, "state": str(job.state), "tasks": job.tasks_total,
                    "error": job.error, "files": [str(f) for f in files]})
    elif job.state == JobState.COMPLETED:
        video = next((f for f in files if f.suffix == ".mp4"), None)
        console.print(f"job {job.id} completed in {_took(job)}: {len(files)} file(s); "
                      f"video: {video}")
    else:
        err_console.print(f"[red]job {job.id} {job.state}[/]: {job.error or 'no reason given'}")
        err_console.print(f"details: pilot show {job.id}")
    if job.state != JobState.COMPLETED:
        raise SystemExit(EXIT_ERROR)


def _warn_missing(info: dict[str, object]) -> None:
    missing = info.get("missing_files") or []
    if isinstance(missing, list) and missing:
        err_console.print(f"[yellow]warning[/]: the scene uses {len(missing)} file(s) that "
                          f"are not inside it, e.g. {missing[0]}")


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
        return pairs
    for output in outputs:
        if output.path in (VIDEO_OUTPUT, ZIP_OUTPUT) or output.path.startswith(FRAMES_PREFIX):
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
