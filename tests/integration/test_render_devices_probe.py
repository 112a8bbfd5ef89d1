"""The Cycles device probe and ``script.py``'s ``setup_device`` in a real Blender (the
``bpy`` package) child: on a machine without a GPU the probe lists the CPU and no GPU,
each backend this build lacks is tolerated, and the choice made from it is the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parallel_pilot.kinds.render import devices
from parallel_pilot.kinds.render.blender import RENDER_SCRIPT, BlenderInstall, find_blender
from parallel_pilot.kinds.render.devices import (
    BACKEND_PREFERENCE,
    PROBE_SCRIPT,
    PROBE_TAG,
    choose_device,
    detect_render_devices,
)
from parallel_pilot.worker.capabilities import detect_gpus

CHILD_TIMEOUT_SECONDS = 120  # a bpy child starts in about a second
KNOWN_TYPES = {*BACKEND_PREFERENCE, "CPU"}

# loads script.py by path inside bpy and reports what setup_device did for each device
SETUP_DEVICE_CHECK = """
import importlib.util, json, sys
import bpy
spec = importlib.util.spec_from_file_location("pilot_render_script", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
prefs = bpy.context.preferences.addons["cycles"].preferences
for device in json.loads(sys.argv[2]):
    scene.cycles.device = "GPU" if device["type"] == "CPU" else "CPU"  # the other one
    outcome = {"asked": device}
    try:
        script.setup_device(scene, device)
    except Exception as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    outcome["scene_device"] = scene.cycles.device
    outcome["enabled"] = [d.type for d in prefs.devices if d.use]
    print("CHECK " + json.dumps(outcome), flush=True)
"""


@pytest.fixture(scope="module")
def bpy_install(requirement: Callable[[str | None], None]) -> BlenderInstall:
    requirement(None if importlib.util.find_spec("bpy") else
                "the bpy package is not installed (pip install 'parallel-pilot[render]')")
    install = find_blender()
    assert install is not None and install.kind == "module"
    return install


@pytest.fixture(autouse=True)
def fresh_probe_cache() -> Iterator[None]:
    devices.probe_devices.cache_clear()
    yield
    devices.probe_devices.cache_clear()


def test_the_probe_prints_one_well_formed_line(bpy_install: BlenderInstall,
                                               tmp_path: Path) -> None:
    job = tmp_path / "probe.json"
    job.write_text("{}")
    proc = subprocess.run(bpy_install.command(PROBE_SCRIPT, job), capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_SECONDS, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PROBE_TAG + " ")]
    assert len(lines) == 1, proc.stdout
    found = json.loads(lines[0].partition(" ")[2])
    assert set(found) == {"devices", "errors"}
    for entry in found["devices"]:
        assert set(entry) == {"type", "name", "id"} and entry["type"] in KNOWN_TYPES
        assert entry["name"] and entry["id"]
    assert [d for d in found["devices"] if d["type"] == "CPU"], "Cycles always lists the CPU"
    assert set(found["errors"]) <= KNOWN_TYPES


def test_detection_in_a_real_blender(bpy_install: BlenderInstall) -> None:
    found = detect_render_devices(bpy_install, detect_gpus())
    assert [d.type for d in found].count("CPU") == 1
    assert {d.type for d in found} <= KNOWN_TYPES
    gpus = [d for d in found if d.type != "CPU"]
    if not gpus:  # this machine: no GPU, so every wish but gpu renders on the CPU
        assert choose_device("any", found) == {"type": "CPU"}
        assert choose_device("cpu", found) == {"type": "CPU"}
        return
    chosen = choose_device("gpu", found)  # a machine with a GPU: its best backend
    assert chosen["type"] in BACKEND_PREFERENCE and chosen["ids"]
    assert choose_device("cpu", found) == {"type": "CPU"}


def setup_device_outcomes(install: BlenderInstall, asked: list[dict]) -> list[dict]:
    proc = subprocess.run([install.path, "-I", "-c", SETUP_DEVICE_CHECK, str(RENDER_SCRIPT),
                           json.dumps(asked)], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_SECONDS, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line[len("CHECK "):]) for line in proc.stdout.splitlines()
            if line.startswith("CHECK ")]


def test_setup_device_in_blender(bpy_install: BlenderInstall) -> None:
    found = detect_render_devices(bpy_install)
    present = {d.type for d in found}
    absent = [b for b in BACKEND_PREFERENCE if b not in present]
    asked = [{"type": "CPU"}] + [{"type": b, "ids": []} for b in absent]
    outcomes = setup_device_outcomes(bpy_install, asked)
    assert len(outcomes) == len(asked)
    cpu, *missing = outcomes
    assert "error" not in cpu and cpu["scene_device"] == "CPU"
    for outcome in missing:
        backend = outcome["asked"]["type"]
        if "error" in outcome:  # refused: the message names the backend
            assert backend in outcome["error"], outcome
        else:  # or nothing of it is enabled, and Cycles falls back to the CPU
            assert backend not in outcome["enabled"], outcome
