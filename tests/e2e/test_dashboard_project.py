"""A Blender project submitted through the dashboard in headless Chromium, rendered by a
real ``pilot worker`` (bpy, Cycles on the CPU), its frames compared with a render at home:
a .zip of a project with linked libraries, UDIM tiles, caches and more (kept after a
refused try, the .blend found by itself), and a picked folder (the page's script sends each
file under its path in the folder; the form asks which of two .blend files to render)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.blender_projects import local_render, make, mean_abs_difference
from tests.e2e.browser import check_accessibility, chromium, new_page, screenshot
from tests.e2e.farm import Farm, wait_for

SAME_PIXELS = 1 / 255 / 10  # a tenth of one 8-bit step
WAIT_S = 240  # longest wait for a job to finish


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory,
         requirement: Callable[[str | None], None]) -> Iterator[Farm]:
    requirement(None if importlib.util.find_spec("bpy") else "the bpy package is not installed")
    f = Farm(tmp_path_factory.mktemp("farm"))
    try:
        f.start_server()
        f.start_worker("w1")
        f.wait_workers_joined(1)
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def chrome(farm: Farm) -> Iterator[Any]:
    with chromium() as b:
        yield b


def log_in(page: Any, farm: Farm) -> None:
    page.goto("/login")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill((farm.data_dir / "admin-password").read_text().strip())
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/jobs$"))


def finished_frame(farm: Farm, page: Any, frame: int, out: Path) -> Path:
    """Wait on the job page until the job completed; the frame as the farm rendered it."""
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    wait_for(lambda: farm.job(job_id)["state"] in ("completed", "failed"), WAIT_S,
             f"job {job_id} to finish")
    assert farm.job(job_id)["state"] == "completed", farm.tasks(job_id)
    page.locator("#job-summary .badge", has_text="completed").wait_for(timeout=30_000)
    outputs = {o["path"]: o["sha256"] for o in
               farm.api("GET", f"/jobs/{job_id}/outputs")["outputs"]}
    response = httpx.get(f"{farm.url}/api/v1/blobs/{outputs[f'frames/{frame:04d}.png']}",
                         headers={"Authorization": f"Bearer {farm.admin_token}"}, timeout=30)
    out.write_bytes(response.content)
    return out


def test_a_zipped_project_renders_from_the_browser(farm: Farm, chrome: Any,
                                                  tmp_path: Path) -> None:
    root = tmp_path / "home" / "proj"
    blend = make("full", root)
    # the form sends what the user zipped: the texture named by an absolute path outside
    # the folder stays behind, so it is missing at home too for the reference render
    shutil.move(f"{root}_abs", tmp_path / "elsewhere")
    reference = local_render(blend, 2, tmp_path / "home-2.png")
    archive = tmp_path / "proj.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(root.rglob("*")):
            out.write(path, f"proj/{path.relative_to(root).as_posix()}")

    page = new_page(chrome, farm.url)
    log_in(page, farm)
    page.goto("/jobs/new")
    page.get_by_label("Blender file (.blend)").set_input_files(str(archive))
    page.get_by_label("Frames", exact=True).fill("2")
    page.get_by_label("Frames per task").fill("0")
    page.get_by_role("button", name="Upload and render").click()
    page.locator("#chunk-error").wait_for()
    hint = page.locator("#scene-hint").inner_text()
    assert "Kept from your last try" in hint and "rendering shots/shot.blend" in hint, hint
    screenshot(page, "submit-project-kept")
    check_accessibility(page, "the submit form with a kept project")

    page.get_by_label("Frames per task").fill("1")
    page.get_by_label("Render even if files the scene uses are missing").check()
    page.get_by_role("button", name="Upload and render").click()
    got = finished_frame(farm, page, 2, tmp_path / "farm-2.png")
    job_id = int(page.url.rsplit("/", 1)[1])
    project = farm.job(job_id)["params"]["project"]
    assert project["main"] == "shots/shot.blend"
    assert {"assets/lib/deep/prop.blend", "textures/udim/tiles.1002.png",
            "caches/anim.abc"} <= set(project["files"])
    difference = mean_abs_difference(reference, got)
    print(f"zipped project, frame 2: mean absolute difference {difference:.6f}")
    assert difference < SAME_PIXELS


def test_a_picked_folder_renders_the_blend_the_user_names(farm: Farm, chrome: Any,
                                                         tmp_path: Path) -> None:
    root = tmp_path / "shots"
    make("shared", root)
    reference = local_render(root / "b.blend", 1, tmp_path / "home-1.png")
    page = new_page(chrome, farm.url)
    log_in(page, farm)
    page.goto("/jobs/new")
    page.get_by_label("Or the project's folder").set_input_files(str(root))
    page.get_by_label("Frames", exact=True).fill("1")
    page.get_by_role("button", name="Upload and render").click()
    error = page.locator("#main_blend-error")
    error.wait_for()
    assert "a.blend, b.blend" in error.inner_text()
    assert "project: 3 files" in page.locator("#scene-hint").inner_text()
    page.get_by_label("Blend file in the project").fill("b.blend")
    page.get_by_role("button", name="Upload and render").click()
    got = finished_frame(farm, page, 1, tmp_path / "farm-1.png")
    job_id = int(page.url.rsplit("/", 1)[1])
    project = farm.job(job_id)["params"]["project"]
    assert project["main"] == "b.blend"
    assert sorted(project["files"]) == ["a.blend", "b.blend", "tex/shared.png"]
    difference = mean_abs_difference(reference, got)
    print(f"picked folder, frame 1: mean absolute difference {difference:.6f}")
    assert difference < SAME_PIXELS
