#!/usr/bin/env bash
# Renders 2 frames on a GPU through a real coordinator and one worker (LocalCluster, the code
# behind `pilot up`), then prints the Cycles devices the worker reported, the device each
# chunk rendered on and the time per frame. Run it from a checkout on a machine with a GPU:
#   scripts/gpu-render-check.sh            # device gpu (exits 2 when Blender sees no GPU)
#   DEVICE=any scripts/gpu-render-check.sh # the same run on any machine (CPU without a GPU)
# Needs the [render] extra (bpy). Everything lives in a temporary folder, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-gpu}
TOTAL_SECONDS=${TOTAL_SECONDS:-600}  # the whole check, scene build and farm start included
# the scene: 960x540 at 128 samples is about a second a frame on a recent GPU; a task
# renders with one CPU thread, so anything but gpu renders a small one
if [ "$DEVICE" = gpu ]; then SCENE=${SCENE:-"960 540 128"}; else SCENE=${SCENE:-"320 180 16"}; fi
WORK=$(mktemp -d -t pilot-gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

timeout --kill-after=30 "$TOTAL_SECONDS" "$PYTHON" - "$WORK" "$DEVICE" $SCENE <<'EOF'
import subprocess, sys, time
from pathlib import Path

from parallel_pilot.client.local_cluster import LocalCluster
from parallel_pilot.kinds.render.devices import detect_render_devices_for_worker
from parallel_pilot.worker.capabilities import detect_gpus

JOIN_SECONDS = 120  # how long the worker may take to register (it probes Blender first)
RENDER_SECONDS = 300  # how long the 2 frames may take, queueing included
work, device, (width, height, samples) = Path(sys.argv[1]), sys.argv[2], sys.argv[3:6]


def show(devices):
    for d in devices:
        memory = f"{d.memory_bytes / 2**30:.1f} GiB" if d.memory_bytes else "memory unknown"
        print(f"  {d.type:7} {d.name} ({memory}) id={d.id}")


print("Cycles devices Blender sees on this machine:")
local = detect_render_devices_for_worker(detect_gpus())
show(local)
if device == "gpu" and not any(d.type != "CPU" for d in local):
    print("no GPU Cycles can render on here; run with DEVICE=any to check the farm anyway")
    sys.exit(2)
blend = work / "scene.blend"
subprocess.run([sys.executable, "-m", "parallel_pilot.scenes.sample_scene", str(blend),
                "--frames", "2", "--width", width, "--height", height, "--samples", samples],
               check=True, capture_output=True, timeout=120)
with LocalCluster(work / "farm", workers=1) as cluster:
    client = cluster.client()
    deadline = time.monotonic() + JOIN_SECONDS
    while not client.workers():
        if time.monotonic() > deadline or cluster.dead_children():
            sys.exit(f"the worker did not join; see {cluster.log_dir}")
        time.sleep(0.5)
    for worker in client.workers():
        print(f"worker {worker.name} reported:")
        show(worker.capabilities.render_devices)
        if not worker.capabilities.render_devices:
            print("  (none: is detect_render_devices_for_worker wired into capabilities?)")
    job = client.submit_render(blend, frames="1-2", chunk=2, device=device)
    try:
        job = client.wait(job.id, timeout=RENDER_SECONDS)
    except TimeoutError as exc:  # a gpu job waits for a worker that reports a GPU
        client.cancel(job.id)
        sys.exit(f"{exc}; the worker log: {cluster.log_dir}")
    print(f"job {job.id} ({width}x{height}, {samples} samples, device {device}): "
          f"{job.state} {job.error or ''}")
    for task in client.tasks(job.id):
        frames = (task.result or {}).get("frame_seconds") or {}
        for frame, seconds in sorted(frames.items()):
            print(f"  {task.name}: frame {frame} took {seconds:.2f} s")
    for line in client.logs(job.id):
        if "PILOT_DEVICE" in line.line or "Blender failed" in line.line:
            print(f"  log: {line.line}")
    sys.exit(0 if job.state == "completed" else 1)
EOF
