"""``pilot demo``: a render across local workers, start to finish (``--sweep``: a
Monte-Carlo sweep instead).

It generates the sample scene with the project's script (``scenes/sample_scene.py``),
starts a ``LocalCluster`` (the same code as ``pilot up``) with two workers, renders the
scene at low resolution with Cycles, and writes ``demo-output/sample.mp4`` and its frames.
``--keep-scene [PATH]`` keeps the generated .blend (default ``demo-output/sample.blend``),
a scene to try ``pilot render`` with. The sweep variant submits a small simulation,
downloads the results and prints them with a combined estimate.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.table import Table

from parallel_pilot.client.cli.common import EXIT_ERROR, UsageFailure, console, err_console
from parallel_pilot.client.cli.progress import follow
from parallel_pilot.client.cli.render import download_render, follow_render
from parallel_pilot.client.local_cluster import LocalCluster, default_worker_count
from parallel_pilot.core.states import JobState
from parallel_pilot.errors import PilotError

DEMO_MAX_WORKERS = 4  # default worker count is one per core, but no more than this
DEMO_SAMPLES = 400_000  # random points per item
DEMO_TIMEOUT = 600.0  # seconds the demo job may take before the demo gives up
RENDER_WORKERS = 2  # local workers of the render demo
RENDER_FRAMES = 48  # frames of the generated sample scene
RENDER_RESOLUTION = 50  # percent of the scene's 320x180
RENDER_SAMPLES = 16  # Cycles samples per pixel
RENDER_CHUNK = 6  # frames per task: few Blender start-ups, yet both workers stay busy
SCENE_TIMEOUT = 120.0  # seconds generating the sample scene may take
SCENE_FILE = "sample.blend"  # --keep-scene without a path: this file in --out

PI_SCRIPT = '''\
"""Estimate pi from random points in the unit square (one seed per sweep item)."""
import argparse, json, os, random

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--samples", type=int, default=100000)
args = parser.parse_args()
rng = random.Random(args.seed)
inside = sum(1 for _ in range(args.samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
result = {"seed": args.seed, "samples": args.samples, "inside": inside,
          "pi": 4.0 * inside / args.samples}
os.makedirs("out", exist_ok=True)
with open("out/result.json", "w") as f:
    json.dump(result, f)
print(f"seed {args.seed}: pi is about {result['pi']:.5f}")
'''


@click.command("demo")
@click.option("--sweep", is_flag=True,
              help="Run the Monte-Carlo sweep demo instead of the render demo.")
@click.option("--workers", type=click.IntRange(1, 256),
              help=f"Local workers (render: {RENDER_WORKERS}; sweep: one per core, "
              f"at most {DEMO_MAX_WORKERS}).")
@click.option("--items", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Sweep: simulations to run (seeds 1..N).")
@click.option("--samples", type=click.IntRange(1, 100_000_000), default=DEMO_SAMPLES,
              show_default=True, help="Sweep: random points per simulation.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Coordinator data dir (default: a temporary one).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-output"), show_default=True, help="Where results go.")
@click.option("--keep-scene", "keep_scene", is_flag=False, flag_value="", default=None,
              metavar="[PATH]",
              help=f"Keep the generated sample .blend (default: OUT/{SCENE_FILE}), to render "
                   "yourself with pilot render.")
def demo_command(sweep: bool, workers: int | None, items: int, samples: int,
                 data_dir: Path | None, out_dir: Path, keep_scene: str | None) -> None:
    """Render a generated animation on two local workers into demo-output/sample.mp4.

    With --sweep: run a Monte-Carlo estimate of pi as a sweep and show the results.
    With --keep-scene: keep the sample .blend as well, a scene for pilot render.
    """
    if sweep and keep_scene is not None:
        raise UsageFailure("--keep-scene keeps the render demo's scene; the sweep demo has "
                           "none (drop --sweep)")
    kept = None if keep_scene is None else Path(keep_scene or out_dir / SCENE_FILE)
    if kept is not None and kept.is_dir():
        kept = kept / SCENE_FILE
    started = time.monotonic()
    if sweep:
        count = workers or min(default_worker_count(), DEMO_MAX_WORKERS)
    else:
        count = workers or RENDER_WORKERS
    tmp = Path(tempfile.mkdtemp(prefix="pilot-demo-"))
    cluster = LocalCluster(data_dir or tmp / "data", port=0, workers=count)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    ok = False
    try:
        if not sweep:
            scene = _make_scene(tmp)
            if kept is not None:
                _keep_scene(scene, kept)
        err_console.print(f"starting a coordinator and {count} worker(s)…")
        cluster.start()
        if sweep:
            ok = _run(cluster, tmp, items, samples, out_dir)
        else:
            ok = _render(cluster, scene, out_dir)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop(hurry_on_signal=True)  # a second Ctrl-C stops everything at once
        signal.signal(signal.SIGTERM, previous)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:  # keep the coordinator's and workers' logs for a look
            err_console.print(f"logs kept in {cluster.log_dir}")
    console.print(f"total wall time: {time.monotonic() - started:.1f} s")
    if not ok:
        raise SystemExit(EXIT_ERROR)


def _make_scene(tmp: Path) -> Path:
    """The sample scene, generated by the project's script in a child process (bpy)."""
    scene = tmp / "sample.blend"
    err_console.print(f"generating a {RENDER_FRAMES}-frame sample scene…")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "parallel_pilot.scenes.sample_scene", str(scene),
             "--frames", str(RENDER_FRAMES), "--samples", str(RENDER_SAMPLES)],
            capture_output=True, text=True, timeout=SCENE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PilotError(f"generating the sample scene took over {SCENE_TIMEOUT:.0f} s") \
            from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise PilotError("could not generate the sample scene (is the bpy package "
                         f"installed? pip install 'parallel-pilot[render]'):\n{tail}")
    return scene


def _keep_scene(scene: Path, kept: Path) -> None:
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(scene, kept)
    except OSError as exc:
        raise PilotError(f"cannot keep the sample scene in {kept}: "
                         f"{exc.strerror or exc}") from None
    console.print(f"kept the sample scene in {kept}; render it yourself with "
                  f"pilot render {kept}")


def _render(cluster: LocalCluster, scene: Path, out_dir: Path) -> bool:
    console.print(f"coordinator at {cluster.url}, {len(cluster.workers)} worker(s)")
    console.print(f"while it runs, the API and its docs: {cluster.url}/api/v1/docs")
    with cluster.client() as client:
        job = client.submit_render(
            scene, engine="CYCLES", samples=RENDER_SAMPLES, resolution=RENDER_RESOLUTION,
            chunk=RENDER_CHUNK, name=f"demo: {RENDER_FRAMES}-frame sample scene")
        console.print(f"submitted job {job.id}: {RENDER_FRAMES} frames in "
                      f"{job.tasks_total - 1} chunks, then assembly")
        job = follow_render(client, job, timeout=DEMO_TIMEOUT,
                            check=lambda: _alive(cluster))
        if job.state != JobState.COMPLETED:
            err_console.print(f"[red]job {job.id} {job.state}[/]: {job.error or ''}")
            return False
        video = out_dir / "sample.mp4"
        files = download_render(client, job.id, video)
    frames = sum(1 for f in files if f != video)
    console.print(f"wrote {video} and {frames} frames in {out_dir / 'sample_frames'}/")
    return video.is_file()


def _run(cluster: LocalCluster, tmp: Path, items: int, samples: int, out_dir: Path) -> bool:
    script = tmp / "pi.py"
    script.write_text(PI_SCRIPT)
    console.print(f"coordinator at {cluster.url}, {len(cluster.workers)} worker(s)")
    with cluster.client() as client:
        # the workers are on this machine, so they can run this very interpreter
        job = client.submit_sweep(
            [sys.executable, "pi.py", "--seed", "{item}", "--samples", str(samples)],
            f"1-{items}", files={"pi.py": script}, collect=["out/*.json"],
            name=f"demo: pi from {items} seeds",
        )
        console.print(f"submitted job {job.id}: {job.tasks_total} simulations")
        job = follow(client, job.id, timeout=DEMO_TIMEOUT, check=lambda: _alive(cluster))
        if job.state != JobState.COMPLETED:
            err_console.print(f"[red]job {job.id} {job.state}[/]: {job.error or ''}")
            return False
        client.download(job.id, out_dir)
    return _print_results(out_dir)


def _alive(cluster: LocalCluster) -> None:
    """Give up at once when the coordinator or every worker has died."""
    dead = cluster.dead_children()
    workers_dead = sum(1 for d in dead if d.startswith("worker"))
    if (dead and dead[0].startswith("coordinator")) or workers_dead == len(cluster.workers):
        raise PilotError(f"{', '.join(dead)} stopped; see the logs in {cluster.log_dir}")


def _print_results(out_dir: Path) -> bool:
    results_file = out_dir / "results.jsonl"
    rows = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    table = Table(title="results", header_style="bold")
    for column in ("item", "exit code", "pi estimate", "samples"):
        table.add_column(column, justify="right")
    inside = total = failures = 0
    for row in rows:
        value = _item_result(out_dir, str(row["item"]))
        if row.get("exit_code") != 0 or value is None:
            failures += 1
            table.add_row(str(row["item"]), str(row.get("exit_code")), "-", "-")
            continue
        inside += int(value["inside"])
        total += int(value["samples"])
        table.add_row(str(row["item"]), "0", f"{value['pi']:.5f}", str(value["samples"]))
    console.print(table)
    if total:
        estimate = 4 * inside / total
        console.print(f"combined estimate from {total:,} points: pi ≈ [bold]{estimate:.6f}[/]")
    console.print(f"results in {out_dir}/ (results.jsonl, items/<item>/out/result.json)")
    if failures:
        err_console.print(f"[red]{failures} item(s) failed[/]")
    return failures == 0 and bool(rows)


def _item_result(out_dir: Path, item: str) -> dict[str, float] | None:
    try:
        data = json.loads((out_dir / "items" / item / "out" / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
