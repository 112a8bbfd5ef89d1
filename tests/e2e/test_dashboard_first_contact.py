"""What a new user meets in the dashboard, in headless Chromium against a real ``pilot
server`` and a real ``pilot worker`` (Blender via bpy, ffmpeg, Python calls, sweeps):

- jobs are named for what they run: an Executor job after its function, a render after
  its file;
- a render task's log reads in words (no ``PILOT_`` protocol line), and the assemble task
  says what it did;
- a failure a retry cannot fix (a scene whose texture was never sent, refused on the
  worker) offers no "Retry failed tasks" and says why;
- a sweep whose items exited non-zero reads "completed, N items failed";
- the icon (``/favicon.ico`` and the page's link) is an image, not a 404;
- logging in from two browsers adds no API token: the Account page and ``pilot tokens
  list`` show the tokens, and "Signed-in browsers" lists the two, each signed out apart.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parallel_pilot import Client, Executor
from tests.e2e.browser import check_accessibility, chromium, new_page, screenshot
from tests.e2e.farm import Farm, wait_for
from tests.e2e.test_dashboard import log_in
from tests.e2e.test_render_e2e import MISSING_TEXTURE_SCRIPT

WAIT_S = 180  # longest wait for a job to finish (seconds)
SCENE_FRAMES = 4  # frames of the generated scene: chunks of 2 give 2 render tasks
PASSWORD = "dana's long password"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory,
           requirement: Callable[[str | None], None]) -> tuple[Path, Path]:
    """A small scene that renders, and one whose texture is outside its project."""
    requirement(None if importlib.util.find_spec("bpy") else "the bpy package is not installed")
    requirement(None if importlib.util.find_spec("imageio_ffmpeg") else
                "imageio-ffmpeg is not installed")
    root = tmp_path_factory.mktemp("scenes")
    good, broken = root / "spinning_cube.blend", root / "broken_texture.blend"
    subprocess.run([sys.executable, "-m", "parallel_pilot.scenes.sample_scene", str(good),
                    "--frames", str(SCENE_FRAMES), "--width", "64", "--height", "36",
                    "--samples", "2"], check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-c", MISSING_TEXTURE_SCRIPT, str(good), str(broken),
                    str(root / "textures" / "wood.png")], check=True, capture_output=True,
                   timeout=120)
    return good, broken


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    f = Farm(tmp_path_factory.mktemp("farm"))
    try:
        f.start_server()
        f.start_worker("w1", slots=2, extra=["--allow", "render,python,sweep"])
        f.wait_workers_joined(1)
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def chrome(farm: Farm) -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def admin_password(farm: Farm) -> str:
    return (farm.data_dir / "admin-password").read_text().strip()


def finished(farm: Farm, job_id: int) -> dict[str, Any]:
    return wait_for(lambda: (j := farm.job(job_id))["state"] in ("completed", "failed",
                                                                  "cancelled") and j,
                    WAIT_S, f"job {job_id} to finish", interval=0.5)


def test_jobs_are_named_for_what_they_run(farm: Farm, scenes: tuple[Path, Path],
                                          chrome: Any, admin_password: str) -> None:
    def simulate(alpha: float) -> float:
        return alpha * 2

    class Model:
        def step(self, x: int) -> int:
            return x + 1

    client = Client(farm.url, farm.admin_token)
    with Executor(client=client) as pool:
        assert pool.submit(simulate, 0.5).result(WAIT_S) == 1.0
    with Executor(client=Client(farm.url, farm.admin_token), batch_seconds=1.0) as pool:
        futures = [pool.submit(Model().step, 1), pool.submit(simulate, 1.0),
                   pool.submit(abs, -3)]
        assert [f.result(WAIT_S) for f in futures] == [2, 2.0, 3]
    render = client.submit_render(scenes[0], frames="1-2", inspect=False)
    finished(farm, render.id)

    page = new_page(chrome, farm.url)
    log_in(page, "admin", admin_password)
    names = page.locator("#jobs-rows td.name").all_inner_texts()
    assert names[:3] == ["spinning_cube.blend", "Model.step +2 more", "simulate"]
    assert "python calls" not in names
    page.get_by_role("link", name="simulate", exact=True).click()
    assert page.locator("h1").inner_text() == "simulate"
    page.context.close()


def test_a_render_log_reads_in_words(farm: Farm, scenes: tuple[Path, Path], chrome: Any,
                                     admin_password: str) -> None:
    job = Client(farm.url, farm.admin_token).submit_render(
        scenes[0], frames=f"1-{SCENE_FRAMES}", chunk=2, inspect=False)
    assert finished(farm, job.id)["state"] == "completed"
    page = new_page(chrome, farm.url)
    log_in(page, "admin", admin_password)
    page.goto(f"/jobs/{job.id}")
    cells = page.locator("#task-grid .cell")
    assert cells.all_inner_texts() == ["1", "2", "3"]  # task N: index + 1, as the CLI
    for number in (1, 2):
        cells.nth(number - 1).click()
        page.wait_for_url(re.compile(rf"/jobs/{job.id}\?task={number}$"))
        head = page.locator("#task-panel .task-head").inner_text()
        assert head.startswith(f"Task {number}: frames ")
        log = page.locator("#task-panel pre").inner_text()
        assert "PILOT_" not in page.locator("#task-panel").inner_text(), log
        first = 2 * number - 1
        assert re.search(rf"^frame {first} done in \d+\.\d s \(1/2\)$", log, re.M), log
        assert re.search(r"^scene \S+: Cycles 64x36, 24 fps", log, re.M), log
    screenshot(page, "first-contact-render-log")
    cells.nth(2).click()  # the assemble task
    page.wait_for_url(re.compile(rf"/jobs/{job.id}\?task=3$"))
    assert "No log lines yet" not in page.locator("#task-panel").inner_text()
    log = page.locator("#task-panel pre").inner_text()
    assert f"assembling frames 1-{SCENE_FRAMES} ({SCENE_FRAMES})" in log
    assert f"encoding {SCENE_FRAMES} PNG frames at 24 fps into H.264 video.mp4" in log
    assert f"frames.zip: {SCENE_FRAMES} frames" in log and "uploaded" in log
    assert "PILOT_" not in log
    check_accessibility(page, "a finished render's assemble log")
    page.context.close()


def test_a_failure_a_retry_cannot_fix_offers_no_retry(farm: Farm, scenes: tuple[Path, Path],
                                                       chrome: Any,
                                                       admin_password: str) -> None:
    # a client without Blender sends the .blend alone; the worker finds its texture missing
    job = Client(farm.url, farm.admin_token).submit_render(scenes[1], frames="1",
                                                           inspect=False)
    shown = finished(farm, job.id)
    assert shown["state"] == "failed" and shown["retryable"] is False, shown
    page = new_page(chrome, farm.url)
    log_in(page, "admin", admin_password)
    page.goto(f"/jobs/{job.id}")
    assert page.locator("h1").inner_text() == "broken_texture.blend"
    assert page.get_by_role("button", name="Retry failed tasks").count() == 0
    assert "No retry" in page.locator("#job-actions").inner_text()
    why = page.locator("#job-summary .alert-error").inner_text()
    assert "a retry cannot help" in why and "wood.png" in why
    assert "InvalidInput" not in why  # a reason for people, not an exception class
    log = page.locator("#task-panel pre").inner_text()
    assert "missing: " in log and "wood.png" in log
    # the reason quotes the log as the log shows it: no protocol line on the page
    assert "PILOT_" not in page.locator("main").inner_text()
    screenshot(page, "first-contact-final-failure")
    check_accessibility(page, "a job failed for good")
    # a failure that another try may fix still offers the retry: a cancelled job
    later = farm.api("POST", "/jobs", json={"kind": "sleep", "params": {"tasks": 1}})
    farm.api("POST", f"/jobs/{later['id']}/cancel")
    page.goto(f"/jobs/{later['id']}")
    assert page.get_by_role("button", name="Retry failed tasks").count() == 1
    page.context.close()


def test_a_sweep_with_failed_items_says_so(farm: Farm, chrome: Any,
                                           admin_password: str) -> None:
    job = farm.api("POST", "/jobs", json={"kind": "sweep", "name": "exit codes", "params": {
        "command": ["sh", "-c", "exit {item}"], "items": "0,1,2"}})
    assert finished(farm, job["id"])["state"] == "completed"
    page = new_page(chrome, farm.url)
    log_in(page, "admin", admin_password)
    badge = page.locator(f'tr[data-job="{job["id"]}"] .badge')
    assert badge.inner_text().lower() == "completed, 2 items failed"
    assert "st-warning" in (badge.get_attribute("class") or "")
    page.goto(f"/jobs/{job['id']}")
    assert page.locator("#job-summary .badge").inner_text().lower() == \
        "completed, 2 items failed"
    assert "2 items exited non-zero" in page.locator("#failed-items").inner_text()
    check_accessibility(page, "a sweep with failed items")
    page.context.close()


def test_the_icon_is_an_image(farm: Farm, chrome: Any) -> None:
    page = new_page(chrome, farm.url)
    page.goto("/login")
    icon = page.request.get("/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.body()[:4] == b"\0\0\1\0"
    links = page.locator("link[rel=icon]")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert "/favicon.ico" in hrefs
    for href in hrefs:
        linked = page.request.get(str(href))
        assert linked.status == 200 and linked.headers["content-type"].startswith("image/")
    # the browser draws it: the SVG loads as an image
    size = page.evaluate("""() => new Promise(done => { const i = new Image();
        i.onload = () => done(i.naturalWidth); i.onerror = () => done(0);
        i.src = '/static/favicon.svg'; })""")
    assert size > 0
    page.context.close()


def test_browsers_are_listed_apart_from_api_tokens(farm: Farm, chrome: Any) -> None:
    made = farm.api("POST", "/users", json={"name": "dana", "password": PASSWORD})
    token = made["token"]

    def tokens_list(*flags: str) -> str:
        return farm.pilot("tokens", "list", *flags, "--token", token).stdout

    before = json.loads(tokens_list("--json"))["tokens"]
    first, second = new_page(chrome, farm.url), new_page(chrome, farm.url)
    log_in(first, "dana", PASSWORD)
    log_in(second, "dana", PASSWORD)
    # two logins, no new API token: the CLI's list is what it was
    assert json.loads(tokens_list("--json"))["tokens"] == before
    listed = tokens_list()
    assert "web session" not in listed and "first token" in listed
    assert "2 browsers signed in to the dashboard: pilot tokens sessions" in listed
    sessions = farm.pilot("tokens", "sessions", "--token", token).stdout
    assert sessions.count("ago") == 2, sessions

    first.get_by_role("link", name="Account", exact=True).click()
    tokens = first.locator("#api-tokens tbody tr")
    assert tokens.all_inner_texts() and all("web session" not in t
                                            for t in tokens.all_inner_texts())
    assert tokens.count() == len(before)
    browsers = first.locator("#sessions .session-row")
    assert browsers.count() == 2
    assert first.locator("#sessions .tag", has_text="this browser").count() == 1
    screenshot(first, "first-contact-account")
    check_accessibility(first, "the account page with signed-in browsers")
    # sign out the other browser: its next page asks it to log in, this one stays
    browsers.filter(has_not_text="this browser").get_by_role(
        "button", name=re.compile("^Sign out")).click()
    first.wait_for_url(re.compile(r"/account$"))
    assert browsers.count() == 1
    second.goto("/jobs")
    assert "/login" in second.url
    first.goto("/jobs")
    assert "/login" not in first.url
    # signing out this browser from the list is logging out
    first.goto("/account")
    browsers.get_by_role("button", name=re.compile("^Sign out")).click()
    first.wait_for_url(re.compile(r"/login"))
    assert "no browser is signed in" in farm.pilot("tokens", "sessions", "--token",
                                                    token).stdout
    first.context.close()
    second.context.close()
