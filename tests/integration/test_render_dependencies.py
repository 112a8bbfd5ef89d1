"""Caches and media a scene uses by relative and absolute paths — a VDB volume sequence, a
mesh-cache (PC2) file by an absolute path outside the project, a movie clip — are traced by
Blender, travel as a project and resolve inside the task folder on the worker, after the
user's folder has moved away. A chunk runs in-process with real Blender (bpy) over the fake
job of test_render_worker.py."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from parallel_pilot.client.render_project import read_project, scene_facts
from parallel_pilot.core.project import sha256_file
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import TaskSpec, parse_params
from tests.blender_projects import local_render, make, mean_abs_difference
from tests.integration.test_render_worker import FakeJob, run_task

ONE_LEVEL = 1 / 255  # one step of an 8-bit channel


@pytest.fixture(autouse=True)
def _blender(requirement: Callable[[str | None], None]) -> None:
    requirement(None if importlib.util.find_spec("bpy") else
                "the bpy package is not installed (pip install 'parallel-pilot[render]')")


def plan_project_job(job: FakeJob, blend: Path, **params: object) -> list[TaskSpec]:
    """What the SDK does (trace, lay out, one blob per file), into the fake job."""
    layout, info = read_project(blend)
    assert layout.missing == []
    hashes = {local: job.add_blob(Path(local)) for local in layout.files.values()}
    assert all(sha256_file(local) == sha for local, sha in hashes.items())
    kind = get_kind("render")
    raw = {"project": layout.manifest(hashes), **scene_facts(info, None), **params}
    raw.pop("default_frames", None)
    checked = kind.check_inputs(parse_params(kind, raw),
                                lambda s, n: job.blobs[s].read_bytes()[:n])
    return kind.plan(checked)


def test_volumes_mesh_caches_and_clips_travel(tmp_path: Path) -> None:
    root = tmp_path / "user" / "caches"
    blend = make("caches", root)
    reference = local_render(blend, 2, tmp_path / "home.png")
    job = FakeJob(tmp_path / "job")
    specs = plan_project_job(job, blend, frames="2")
    files = set(specs[0].inputs)
    assert {"caches.blend", "clips/clip.mp4", "vdb/smoke_0001.vdb", "vdb/smoke_0002.vdb",
            "vdb/smoke_0003.vdb"} <= files
    outside = f"{root}_abs/wave.pc2"
    assert specs[0].payload["absolute"] == {outside: f"_abs{outside}"}
    shutil.move(tmp_path / "user", tmp_path / "moved-away")  # the user's folder is gone
    result, ctx = run_task(job, 0, specs[0])
    assert list(result["frames"]) == ["2"]
    difference = mean_abs_difference(reference, job.blobs[job.outputs["frames/0002.png"]])
    print(f"mean absolute difference {difference:.6f}")
    assert difference < ONE_LEVEL / 10


WALK_SCRIPT = """
import bpy, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("deps", sys.argv[-2])
deps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(deps)
bpy.ops.wm.open_mainfile(filepath=sys.argv[-1], load_ui=False, use_scripts=False)
def flat(pairs):
    return sorted((type(i).__name__, i.name, p) for i, p in pairs)
print(json.dumps([flat(deps._id_paths()), flat(deps._id_paths(deps._walked_paths()))]))
"""


def test_blender_before_4_3_finds_the_same_paths_by_walking(tmp_path: Path) -> None:
    """Blender 4.2 LTS has no ``bpy.data.file_path_map``: the walk that replaces it finds
    the paths it would give, on every kind of dependency the test projects hold."""
    import json
    import subprocess
    import sys

    from parallel_pilot.kinds.render import dependencies

    for kind in ("full", "caches"):
        blend = make(kind, tmp_path / kind)
        proc = subprocess.run([sys.executable, "-c", WALK_SCRIPT, dependencies.__file__,
                               str(blend)], capture_output=True, text=True, check=True,
                              timeout=120)
        mapped, walked = json.loads(proc.stdout.strip().splitlines()[-1])
        assert walked and set(map(tuple, walked)) == set(map(tuple, mapped)), kind
