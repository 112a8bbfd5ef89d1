"""The web dashboard in headless Chromium against a real ``pilot server`` and a real
``pilot worker`` rendering with Blender (bpy): log in, submit a generated scene through
the upload form, watch the progress bar and task grid change without a reload, see the
preview, load the video, download the zip; live updates survive a coordinator restart;
another user cannot open the job; every page passes axe-core (no serious violations).
Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.browser import check_accessibility, chromium, new_page, screenshot
from tests.e2e.farm import Farm

SCENE_FRAMES = 12  # frames of the generated scene; chunks of 2 give 6 render tasks
PASSWORD = "bob's long password"
WAIT_MS = 120_000  # longest wait for a render milestone in the browser


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory,
          requirement: Callable[[str | None], None]) -> Path:
    requirement(None if importlib.util.find_spec("bpy") else "the bpy package is not installed")
    requirement(None if importlib.util.find_spec("imageio_ffmpeg") else
                "imageio-ffmpeg is not installed")
    out = tmp_path_factory.mktemp("scene") / "sample.blend"
    subprocess.run([sys.executable, "-m", "parallel_pilot.scenes.sample_scene", str(out),
                    "--frames", str(SCENE_FRAMES), "--width", "64", "--height", "36",
                    "--samples", "2"], check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
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


def log_in(page: Any, name: str, password: str) -> None:
    page.goto("/jobs")
    assert "/login" in page.url  # pages need a session
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/jobs$"))


def progress_value(page: Any) -> float:
    return float(page.locator("#job-summary progress").get_attribute("value") or 0)


def test_render_from_the_browser(farm: Farm, scene: Path, chrome: Any) -> None:
    page = new_page(chrome, farm.url)
    page.goto("/login")
    screenshot(page, "login")
    check_accessibility(page, "the login page")
    log_in(page, "admin", (farm.data_dir / "admin-password").read_text().strip())
    check_accessibility(page, "the empty jobs list")

    # a refused form: the error is next to its field, and the file is kept
    page.get_by_role("link", name="Submit a render").first.click()
    page.get_by_label("Blender file (.blend)").set_input_files(str(scene))
    page.get_by_label("Frames", exact=True).fill("1-99")
    page.get_by_label("Frames per task").fill("0")
    page.get_by_role("button", name="Upload and render").click()
    error = page.locator("#chunk-error")
    error.wait_for()
    assert "greater than or equal to 1" in error.inner_text()
    assert page.get_by_label("Frames per task").get_attribute("aria-invalid") == "true"
    assert "Kept from your last try" in page.locator("#scene-hint").inner_text()
    screenshot(page, "submit-errors")
    check_accessibility(page, "the submit form with errors")

    # the real submit, sent by the page's script (upload progress, CSRF header)
    page.get_by_label("Frames", exact=True).fill(f"1-{SCENE_FRAMES}")
    page.get_by_label("Frames per task").fill("2")
    page.get_by_label("Samples").fill("2")
    page.get_by_label("Render engine").select_option("CYCLES")
    page.get_by_label("Job name").fill("browser render")
    page.get_by_label("Blender file (.blend)").set_input_files(str(scene))
    # a slow link (bytes per second), so that the upload bar has something to show
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": max(scene.stat().st_size // 2, 50_000)})
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/jobs/new")) \
            as posted:
        page.get_by_role("button", name="Upload and render").click()
    assert posted.value.headers.get("x-csrf-token"), "the form was not sent by the script"
    page.wait_for_function("(p => p && p.value > 0 && p.value < 100)"
                           "(document.getElementById('upload-progress'))")
    assert "% · " in page.locator("#upload-text").inner_text()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    job_id = int(page.url.rsplit("/", 1)[1])
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    # live: the bar moves and cells turn done while the job runs, without a reload
    first = progress_value(page)
    page.wait_for_function("document.querySelectorAll('#task-grid .cell.st-done').length >= 2",
                           timeout=WAIT_MS)
    page.locator("#preview-image").wait_for(timeout=WAIT_MS)
    page.wait_for_function("document.getElementById('preview-image').naturalWidth > 0")
    assert progress_value(page) > first
    if page.locator("#job-summary .badge").text_content() == "running":
        screenshot(page, "job-running")
        check_accessibility(page, "a running job")
    page.locator("#job-summary .badge", has_text="completed").wait_for(timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    assert progress_value(page) == 100
    assert page.locator("#task-grid .cell.st-done").count() == SCENE_FRAMES // 2 + 1
    assert page.locator("#job-thumbs img").count() == SCENE_FRAMES
    assert page.locator("#units-done").inner_text() == f"{SCENE_FRAMES}/{SCENE_FRAMES}"

    # the video loads in the page's player; the zip downloads with every frame
    page.wait_for_function("document.getElementById('job-video').readyState >= 1",
                           timeout=30_000)
    duration = page.evaluate("document.getElementById('job-video').duration")
    assert duration > 0
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("Download frames")).click()
    assert download.value.suggested_filename == "frames.zip"
    names = zipfile.ZipFile(download.value.path()).namelist()
    assert names == [f"{f:04d}.png" for f in range(1, SCENE_FRAMES + 1)]
    page.locator("#task-grid .cell").first.click()  # a task's log tail
    assert "frame" in page.locator("#task-panel pre").inner_text().lower()
    screenshot(page, "job-finished")
    check_accessibility(page, "a finished job")

    # without JavaScript the pages still read: rendered on the server
    plain = new_page(chrome, farm.url, javascript=False)
    log_in(plain, "admin", (farm.data_dir / "admin-password").read_text().strip())
    assert plain.locator(f'tr[data-job="{job_id}"]').count() == 1
    plain.goto(f"/jobs/{job_id}")
    assert plain.locator("#task-grid .cell.st-done").count() == SCENE_FRAMES // 2 + 1
    assert plain.locator("#job-video").count() == 1
    assert plain.locator("#job-thumbs img").count() == SCENE_FRAMES
    plain.context.close()

    page.get_by_role("link", name="Workers", exact=True).click()
    assert page.locator("#workers-rows").inner_text().count("w1") == 1
    screenshot(page, "workers")
    check_accessibility(page, "the workers page")
    page.get_by_role("link", name="Account", exact=True).click()
    screenshot(page, "account")
    check_accessibility(page, "the account page")

    # the jobs list stays live across a coordinator restart
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.locator("#live-status.on").wait_for()
    assert page.locator(f'tr[data-job="{job_id}"] .badge').text_content() == "completed"
    check_accessibility(page, "the jobs list")
    page.evaluate("window.__sameDocument = true")
    farm.kill_server()
    page.locator("#live-status.off").wait_for()
    farm.start_server()
    later = farm.api("POST", "/jobs", json={"kind": "sleep", "params": {"tasks": 1},
                                            "name": "after the restart"})
    row = page.locator(f'tr[data-job="{later["id"]}"]')
    row.wait_for(timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True
    assert row.locator("td").last.text_content() == "admin"  # the owner column, for admins
    screenshot(page, "jobs-list")


def test_a_second_user_cannot_open_the_first_users_job(farm: Farm, scene: Path,
                                                        chrome: Any) -> None:
    for name in ("alice", "bob"):
        farm.api("POST", "/users", json={"name": name, "password": PASSWORD})
    # alice's browser enforces the pages' Content-Security-Policy: their scripts (upload,
    # live updates) must work under it
    alice = new_page(chrome, farm.url, bypass_csp=False)
    refused: list[str] = []
    alice.on("console", lambda m: refused.append(m.text)
             if "Content Security Policy" in m.text else None)
    log_in(alice, "alice", PASSWORD)
    alice.goto("/jobs/new")
    alice.get_by_label("Blender file (.blend)").set_input_files(str(scene))
    alice.get_by_label("Frames", exact=True).fill("1-2")
    with alice.expect_request(lambda r: r.method == "POST") as posted:
        alice.get_by_role("button", name="Upload and render").click()
    assert posted.value.headers.get("x-csrf-token"), "the form was not sent by the script"
    alice.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_url = alice.url
    job_id = job_url.rsplit("/", 1)[1]
    alice.locator("#live-status.on").wait_for()  # the live stream runs under the policy
    assert refused == []
    bob = new_page(chrome, farm.url)
    log_in(bob, "bob", PASSWORD)
    response = bob.goto(job_url)
    assert response is not None and response.status == 404
    assert f"no job {job_id}" in bob.locator("main").inner_text()
    check_accessibility(bob, "the not-found page")
    assert bob.locator(f'tr[data-job="{job_id}"]').count() == 0
    # nor its files: the .blend alice uploaded is "not found" for bob's session
    sha = httpx.get(f"{farm.url}/api/v1/jobs/{job_id}", timeout=10, headers={
        "Authorization": f"Bearer {farm.admin_token}"}).json()["params"]["scene"]
    assert bob.request.get(f"/api/v1/blobs/{sha}").status == 404
    assert alice.request.get(f"/api/v1/blobs/{sha}").status == 200
    assert bob.request.get(f"/events/jobs/{job_id}").status == 404
    farm.api("POST", f"/jobs/{job_id}/cancel")
