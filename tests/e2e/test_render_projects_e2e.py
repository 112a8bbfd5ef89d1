"""Real Blender projects on the farm, as users make them (tests/blender_projects.py): the
CLI traces and packs every file the scene uses, the user's folder is moved away before any
worker starts, and the farm's frames are compared with a render of the same frames at home
from the original folder. Real ``pilot server`` and ``pilot worker`` processes, the bpy
package, Cycles on the CPU."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.blender_projects import local_render, make, mean_abs_difference
from tests.e2e.farm import Farm

ONE_LEVEL = 1 / 255  # one step of an 8-bit channel
SAME_PIXELS = ONE_LEVEL / 10  # what "the same pixels" allows: a tenth of one 8-bit step


@pytest.fixture(autouse=True)
def _blender(requirement: Callable[[str | None], None]) -> None:
    requirement(None if importlib.util.find_spec("bpy") else
                "the bpy package is not installed (pip install 'parallel-pilot[render]')")


def submit(farm: Farm, blend: Path, *args: str) -> dict:
    out = farm.pilot("render", str(blend), *args, "--no-wait", "--json", timeout=240)
    return json.loads(out.stdout)


def finish(farm: Farm, job: int, out: Path) -> Path:
    farm.pilot("wait", str(job), timeout=300)
    farm.pilot("download", str(job), "--out", str(out))
    return out / "frames"


def test_a_project_renders_on_the_farm_as_it_does_at_home(farm: Farm, tmp_path: Path) -> None:
    root = tmp_path / "home" / "ann" / "proj"
    blend = make("full", root)
    frames = (2, 5)  # the image sequence, the particles and the Alembic cube all move
    references = {f: local_render(blend, f, tmp_path / f"home-{f}.png") for f in frames}
    farm.start_server()
    job = submit(farm, blend, "--frames", ",".join(map(str, frames)))
    assert job["uploaded_files"] >= 20 and job["skipped_files"] == 0

    params = farm.job(job["job"])["params"]["project"]
    assert params["main"] == "shots/shot.blend"
    files = set(params["files"])
    assert {"assets/lib/char.blend", "assets/lib/deep/prop.blend",  # linked two levels deep
            "assets/lib/deep/prop_tex.png", "textures/wood.png",
            "textures/udim/tiles.1001.png", "textures/udim/tiles.1002.png",
            "caches/anim.abc", "fonts/mono.woff2", "sounds/beep.wav"} <= files
    assert {f"textures/seq/frame_{i:04d}.png" for i in range(1, 7)} <= files
    assert any(f.startswith("shots/blendcache_shot/parts_") for f in files)
    outside = f"{root}_abs/abs_tex.png"  # named by an absolute path, outside the folder
    in_library = f"{root}_abs/glow.png"  # the same, inside the linked prop.blend
    assert params["absolute"] == {outside: f"_abs{outside}", in_library: f"_abs{in_library}"}

    # the user's machine no longer has the project (nor the absolute texture beside it):
    # only what travelled can be rendered
    shutil.move(root.parent, tmp_path / "moved-away")
    assert not Path(outside).exists()
    farm.start_worker("w1")
    got = finish(farm, job["job"], tmp_path / "farm")
    for frame, reference in references.items():
        difference = mean_abs_difference(reference, got / f"{frame:04d}.png")
        print(f"frame {frame}: mean absolute difference {difference:.6f} "
              f"({difference / ONE_LEVEL:.4f} of an 8-bit step)")
        assert difference < SAME_PIXELS


def test_a_texture_two_jobs_share_is_uploaded_once(farm: Farm, tmp_path: Path) -> None:
    make("shared", tmp_path / "shots")
    texture = (tmp_path / "shots" / "tex" / "shared.png").stat().st_size
    farm.start_server()
    first = submit(farm, tmp_path / "shots" / "a.blend", "--frames", "1")
    second = submit(farm, tmp_path / "shots" / "b.blend", "--frames", "1")
    a_size = (tmp_path / "shots" / "a.blend").stat().st_size
    b_size = (tmp_path / "shots" / "b.blend").stat().st_size
    assert (first["uploaded_files"], first["uploaded_bytes"]) == (2, a_size + texture)
    # the second job sends its own .blend; the texture is on the coordinator already
    assert (second["uploaded_files"], second["uploaded_bytes"]) == (1, b_size)
    assert (second["skipped_files"], second["skipped_bytes"]) == (1, texture)
    shared = {farm.job(j["job"])["params"]["project"]["files"]["tex/shared.png"]
              for j in (first, second)}
    assert len(shared) == 1
    stored = list((farm.data_dir / "blobs").rglob(shared.pop()))
    assert len(stored) == 1  # one copy on the coordinator


@pytest.mark.parametrize("kind", ["ffmpeg", "sequencer"])
def test_video_output_and_sequencer_scenes_render_as_at_home(farm: Farm, tmp_path: Path,
                                                            kind: str) -> None:
    blend = make(kind, tmp_path / "p")
    reference = local_render(blend, 3, tmp_path / "home.png")
    farm.start_server()
    farm.start_worker("w1")
    job = submit(farm, blend, "--frames", "3")
    got = finish(farm, job["job"], tmp_path / "farm")
    difference = mean_abs_difference(reference, got / "0003.png")
    print(f"{kind}: mean absolute difference {difference:.6f}")
    assert difference < SAME_PIXELS


def test_a_file_saved_from_the_default_startup_renders(farm: Farm, tmp_path: Path) -> None:
    # its brush asset references point into the Blender that saved it, not the worker's
    blend = make("startup", tmp_path / "p")
    farm.start_server()
    farm.start_worker("w1")
    job = submit(farm, blend, "--frames", "1", "--engine", "BLENDER_WORKBENCH")
    assert farm.job(job["job"])["params"]["project"]["files"].keys() == {"untitled.blend"}
    got = finish(farm, job["job"], tmp_path / "farm")
    assert (got / "0001.png").stat().st_size > 0


def test_a_scene_without_a_camera_is_refused_at_submit(farm: Farm, tmp_path: Path) -> None:
    blend = make("nocamera", tmp_path / "p")
    farm.start_server()
    refused = farm.pilot("render", str(blend), "--frames", "1", check=False)
    assert refused.returncode != 0
    assert "has no active camera" in refused.stderr and "no camera at all" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert farm.api("GET", "/jobs")["jobs"] == []  # nothing half-created


def test_missing_files_are_named_at_submit_by_the_users_path(farm: Farm,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "proj"
    blend = make("full", root)
    (root / "textures" / "wood.png").unlink()
    farm.start_server()
    refused = farm.pilot("render", str(blend), "--frames", "1", check=False)
    assert refused.returncode != 0
    assert '//../textures/wood.png (image "wood.png", in shots/shot.blend)' in refused.stderr
    assert "--allow-missing-files" in refused.stderr
    assert farm.api("GET", "/jobs")["jobs"] == []
    job = submit(farm, blend, "--frames", "1", "--allow-missing-files")
    assert "textures/wood.png" not in farm.job(job["job"])["params"]["project"]["files"]
    farm.start_worker("w1")
    got = finish(farm, job["job"], tmp_path / "farm")
    assert (got / "0001.png").is_file()  # rendered without it, as the user chose
