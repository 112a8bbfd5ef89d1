"""Render benchmark: wall time to render N frames with 1 worker vs 2 workers.

Generates the sample scene (320x180, Cycles, 16 samples) with the project's script, then
for 1 and 2 local workers (``LocalCluster``, one slot each, one render thread per task)
times one render job from submit to completed (the assembly into an mp4 included; the
cluster's start-up not) and reports the parallel efficiency ``t1 / (2 * t2)``. The job
uses the project's default chunk size unless ``--chunk`` says otherwise.

    python bench/render.py [--frames 24] [--chunk N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from parallel_pilot.client.local_cluster import LocalCluster
from parallel_pilot.kinds.render.kind import default_chunk

DEFAULT_FRAMES = 24  # frames rendered per measurement
SAMPLES = 16  # Cycles samples per pixel
WIDTH, HEIGHT = 320, 180  # pixels of the rendered frames
JOIN_TIMEOUT = 60.0  # seconds the workers may take to register
TIMEOUT = 1800.0  # seconds one render may take


def make_scene(tmp: Path, frames: int) -> Path:
    scene = tmp / "sample.blend"
    subprocess.run([sys.executable, "-m", "parallel_pilot.scenes.sample_scene", str(scene),
                    "--frames", str(frames), "--width", str(WIDTH), "--height", str(HEIGHT),
                    "--samples", str(SAMPLES)], check=True, capture_output=True, timeout=120)
    return scene


def time_render(tmp: Path, scene: Path, workers: int, frames: int, chunk: int) -> float:
    """Seconds from submit to completed for one render job on ``workers`` local workers."""
    with LocalCluster(tmp / f"data-{workers}", workers=workers) as cluster:
        client = cluster.client()
        deadline = time.monotonic() + JOIN_TIMEOUT
        while len(client.workers()) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} workers did not join in {JOIN_TIMEOUT:.0f} s")
            time.sleep(0.1)
        client.connection.upload_blob(scene)  # the upload is not what is measured
        started = time.perf_counter()
        job = client.submit_render(scene, frames=f"1-{frames}", chunk=chunk, engine="CYCLES",
                                   samples=SAMPLES, resolution=100, inspect=False,
                                   name=f"bench: {frames} frames on {workers} worker(s)")
        info = client.wait(job.id, poll_seconds=0.1, timeout=TIMEOUT)
        elapsed = time.perf_counter() - started
        client.close()
    if info.state != "completed":
        raise RuntimeError(f"job {job.id} ended {info.state}: {info.error}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                        help="frames to render (default %(default)s)")
    parser.add_argument("--chunk", type=int, help="frames per task (default: the project's "
                        "default for that many frames)")
    parser.add_argument("--json", action="store_true", help="print only JSON")
    args = parser.parse_args(argv)
    chunk = args.chunk or default_chunk(args.frames)
    with tempfile.TemporaryDirectory(prefix="pilot-bench-render-") as name:
        tmp = Path(name)
        scene = make_scene(tmp, args.frames)
        t1 = time_render(tmp, scene, 1, args.frames, chunk)
        t2 = time_render(tmp, scene, 2, args.frames, chunk)
    results: dict[str, Any] = {
        "frames": args.frames, "chunk": chunk, "resolution": f"{WIDTH}x{HEIGHT}",
        "samples": SAMPLES, "engine": "CYCLES", "cpu_cores": len(os.sched_getaffinity(0)),
        "seconds_1_worker": round(t1, 2), "seconds_2_workers": round(t2, 2),
        "speedup": round(t1 / t2, 3), "efficiency": round(t1 / (2 * t2), 3),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.frames} frames, {WIDTH}x{HEIGHT}, Cycles {SAMPLES} samples, chunks of "
          f"{chunk}, {results['cpu_cores']} cores")
    print(f"{'workers':>8} {'wall s':>8} {'s/frame':>8}")
    print(f"{1:>8} {t1:>8.1f} {t1 / args.frames:>8.2f}")
    print(f"{2:>8} {t2:>8.1f} {t2 / args.frames:>8.2f}")
    print(f"speedup {t1 / t2:.2f}x, parallel efficiency t1/(2*t2) = {t1 / (2 * t2):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
