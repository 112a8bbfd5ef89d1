"""The Blender add-on end to end: ``pilot addon build`` makes the zip; a bpy child process
installs it as Blender 4.2+ does (``extensions.package_install_files`` into a user
extensions folder of the test's own), sets the server and token in the add-on's
preferences, opens a real project (linked libraries, textures, UDIM tiles, caches, an
absolute path) and calls the panel's operator; a real coordinator and worker render it,
and the frames and the video come back through the API."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.blender_projects import BPY_PYTHON, make
from tests.e2e.farm import Farm, wait_for

ADDON_MODULE = "bl_ext.user_default.parallel_pilot_blender"
CHILD_TIMEOUT = 300.0  # seconds a Blender child may take (its own waits are shorter)
FOLLOW_TIMEOUT = 240.0  # seconds the child follows its job through the add-on

# Runs in a bpy child: installs the add-on from the zip, then does what the test asks.
CHILD = r"""
import importlib, json, sys, time
import bpy

args = json.loads(sys.argv[-1])
bpy.ops.extensions.package_install_files(filepath=args["zip"], repo="user_default",
                                         enable_on_install=True)
module = args["module"]
assert module in bpy.context.preferences.addons, "the add-on is not enabled"
addon = importlib.import_module(module)
prefs = bpy.context.preferences.addons[module].preferences
prefs.server, prefs.token = args["server"], args["token"]
out = {"registered": hasattr(bpy.ops.parallel_pilot, "render_on_farm"),
       "panel": hasattr(bpy.types, "PARALLEL_PILOT_PT_render_on_farm")}


def attempt(**settings):
    # the operator as the panel's button calls it; its error report, if any
    for name, value in settings.items():
        setattr(bpy.context.scene.parallel_pilot, name, value)
    try:
        bpy.ops.parallel_pilot.render_on_farm()
    except RuntimeError as exc:
        return str(exc)
    return None


if args["mode"] == "render":
    bpy.ops.wm.open_mainfile(filepath=args["blend"], load_ui=False, use_scripts=False)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 2
    out["error"] = attempt(chunk=1, samples=2, device="CPU")
    out["job"] = scene.parallel_pilot.job_id
    out["report"] = addon.follow.STATUSES[addon.submit.scene_key(scene)].report
    # the same project again, the way the UI does it (upload and submit in a thread, the
    # timer handing the job to the scene); the timer is run by hand: background Blender
    # has no event loop to run bpy.app.timers
    submission = addon.submit.prepare()
    status = addon.follow.start(submission.scene_key, submission.server, submission.token,
                                submission=submission)
    deadline = time.monotonic() + args["follow_timeout"]
    while not (status.job_id or status.finished) and time.monotonic() < deadline:
        addon.follow.drain()
        time.sleep(0.05)
    out["again"] = {"job": status.job_id, "scene_job": scene.parallel_pilot.job_id,
                    "report": status.report, "error": status.error}
    addon.api.Api(args["server"], args["token"]).call("POST", f"/jobs/{status.job_id}/cancel")
    scene.parallel_pilot.job_id = out["job"]
    # the panel's "Follow Job" on the first job, until it is done
    bpy.ops.parallel_pilot.follow_job()
    status = addon.follow.STATUSES[addon.submit.scene_key(scene)]
    deadline = time.monotonic() + args["follow_timeout"]
    while not status.finished and time.monotonic() < deadline:
        addon.follow.drain()
        time.sleep(0.2)
    addon.follow.drain()
    out["status"] = {k: getattr(status, k) for k in ("job_id", "state", "text", "progress",
                                                      "error", "url")}
    bpy.ops.parallel_pilot.download_results()  # the panel's button once the job is done
    out["downloaded"] = bpy.path.abspath(f"//parallel_pilot/job_{status.job_id}")
else:
    out["errors"] = {}
    out["errors"]["unsaved"] = attempt()  # the startup file, never saved
    for case in args["cases"]:
        bpy.ops.wm.open_mainfile(filepath=case["blend"], load_ui=False, use_scripts=False)
        prefs.token = case.get("token", args["token"])
        out["errors"][case["name"]] = attempt(**case.get("settings", {}))
print("PILOT_ADDON " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory,
              requirement: Callable[[str | None], None]) -> Path:
    requirement(None if importlib.util.find_spec("bpy") else
                "the bpy package is not installed (pip install 'parallel-pilot[render]')")
    out = tmp_path_factory.mktemp("addon")
    built = subprocess.run([sys.executable, "-m", "parallel_pilot", "addon", "build",
                            "--out", str(out)], capture_output=True, text=True, timeout=60,
                           check=True)
    assert "wrote" in built.stdout
    (zip_path,) = out.glob("parallel_pilot_blender-*.zip")
    return zip_path


@pytest.fixture(scope="module")
def full_project(tmp_path_factory: pytest.TempPathFactory,
                 requirement: Callable[[str | None], None]) -> Path:
    requirement(None if importlib.util.find_spec("imageio_ffmpeg") else
                "imageio-ffmpeg is not installed (pip install 'parallel-pilot[render]')")
    return make("full", tmp_path_factory.mktemp("projects") / "proj")


def in_blender(farm: Farm, addon_zip: Path, **args: Any) -> dict[str, Any]:
    """Run ``CHILD`` in a bpy process with a user folder of its own; what it printed."""
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(farm.root / "blender-user")}
    payload = {"zip": str(addon_zip), "module": ADDON_MODULE, "server": farm.url,
               "token": farm.admin_token, "follow_timeout": FOLLOW_TIMEOUT, **args}
    proc = subprocess.run([BPY_PYTHON, "-c", CHILD, json.dumps(payload)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env,
                          cwd=farm.root, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PILOT_ADDON ")]
    assert proc.returncode == 0 and lines, (f"the Blender child exited {proc.returncode}:\n"
                                            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("PILOT_ADDON "))


def blob(farm: Farm, sha256: str) -> bytes:
    response = httpx.get(f"{farm.url}/api/v1/blobs/{sha256}", timeout=30,
                         headers={"Authorization": f"Bearer {farm.admin_token}"})
    response.raise_for_status()
    return response.content


def test_the_addons_operator_renders_a_real_project_on_the_farm(
        farm: Farm, addon_zip: Path, full_project: Path) -> None:
    farm.start_server()
    farm.start_worker("w1")
    farm.wait_workers_joined(1)
    out = in_blender(farm, addon_zip, mode="render", blend=str(full_project))
    assert out["registered"] and out["panel"]
    assert out["error"] is None, out["error"]
    job_id = out["job"]
    assert job_id > 0
    assert out["report"].startswith("uploaded ")

    job = wait_for(lambda: (j := farm.job(job_id))["state"] in ("completed", "failed") and j,
                   120, f"job {job_id} to finish")
    assert job["state"] == "completed", job["error"]
    params = job["params"]
    assert params["frames"] == "1-2" and params["chunk"] == 1 and params["device"] == "cpu"
    assert params["scene_frame_end"] == 2 and params["scene_needs_camera"] is True
    files = params["project"]["files"]
    assert params["project"]["main"] == "shots/shot.blend"
    for path in ("assets/lib/char.blend", "assets/lib/deep/prop.blend",
                 "assets/lib/deep/prop_tex.png", "textures/wood.png",
                 "textures/udim/tiles.1001.png", "textures/udim/tiles.1002.png",
                 "textures/seq/frame_0006.png", "caches/anim.abc", "fonts/mono.woff2",
                 "sounds/beep.wav"):
        assert path in files, f"{path} is not in the manifest: {sorted(files)}"
    assert any(p.startswith("shots/blendcache_shot/") for p in files)
    absolute = f"{full_project.parents[1]}_abs/abs_tex.png"
    assert params["project"]["absolute"][absolute] == "_abs" + absolute

    outputs = {o["path"]: o for o in farm.api("GET", f"/jobs/{job_id}/outputs")["outputs"]}
    assert {"frames/0001.png", "frames/0002.png", "video.mp4", "frames.zip"} <= set(outputs)
    for name in ("frames/0001.png", "frames/0002.png"):
        assert blob(farm, outputs[name]["sha256"]).startswith(b"\x89PNG\r\n\x1a\n")
    video = farm.root / "video.mp4"
    video.write_bytes(blob(farm, outputs["video.mp4"]["sha256"]))
    import imageio_ffmpeg

    assert imageio_ffmpeg.count_frames_and_secs(str(video))[0] == 2

    again = out["again"]  # the same project again: only the re-saved .blend travels
    assert again["error"] == "" and again["job"] > job_id
    assert again["scene_job"] == again["job"]
    sent = re.match(r"uploaded (\d+) file\(s\), .*; (\d+) already on the farm",
                    again["report"])
    assert sent, again["report"]
    assert int(sent[1]) <= 1 and int(sent[1]) + int(sent[2]) == len(files)

    status = out["status"]  # what the panel showed, from the add-on's own follower
    assert status["job_id"] == job_id and status["state"] == "completed"
    assert status["progress"] == 1.0 and status["error"] == ""
    assert status["text"].startswith("completed: 2 frame(s)") and "video.mp4" in status["text"]
    assert status["url"] == f"{farm.url}/jobs/{job_id}"

    downloaded = Path(out["downloaded"])  # the frames and video, back beside the .blend
    assert downloaded == full_project.parent / "parallel_pilot" / f"job_{job_id}"
    got = sorted(str(p.relative_to(downloaded)) for p in downloaded.rglob("*") if p.is_file())
    assert got == ["frames/0001.png", "frames/0002.png", "video.mp4"]
    for path in got:
        assert _sha256(downloaded / path) == outputs[path]["sha256"]


def test_the_addon_refuses_with_the_reason_before_a_job_is_made(
        farm: Farm, addon_zip: Path, full_project: Path, tmp_path: Path) -> None:
    farm.start_server()  # no worker: nothing here may become a task
    nocamera = make("nocamera", tmp_path / "nocamera")
    startup = make("startup", tmp_path / "startup")
    broken = tmp_path / "broken"
    shutil.copytree(full_project.parent.parent, broken)
    (broken / "textures" / "wood.png").unlink()
    cases = [
        {"name": "nocamera", "blend": str(nocamera)},
        {"name": "missing", "blend": str(broken / "shots" / "shot.blend")},
        {"name": "frames", "blend": str(startup),
         "settings": {"use_scene_frames": False, "frames": "300-310"}},
        {"name": "token", "blend": str(startup), "token": "not-a-token"},
    ]
    out = in_blender(farm, addon_zip, mode="refuse", cases=cases)
    errors = out["errors"]
    assert "save the file first" in errors["unsaved"]
    assert "has no active camera" in errors["nocamera"]
    assert "//../textures/wood.png" in errors["missing"]
    assert "Allow missing files" in errors["missing"]
    assert "outside the scene's frame range" in errors["frames"]  # the coordinator's words
    assert "token" in errors["token"].lower()
    assert farm.api("GET", "/jobs")["jobs"] == []
    # nothing of the projects refused before the upload travelled (the one with a
    # missing texture was saved first: its .blend as it is now)
    for refused in (nocamera, broken / "shots" / "shot.blend", broken / "assets" / "lib" /
                    "char.blend"):
        response = httpx.head(f"{farm.url}/api/v1/blobs/{_sha256(refused)}", timeout=30,
                              headers={"Authorization": f"Bearer {farm.admin_token}"})
        assert response.status_code == 404, f"{refused} was uploaded"


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
