"""A job's outputs through the real API on SQLite, PostgreSQL and MariaDB: each path once,
the latest output of a path winning among those of the attempts that count (a render's
``preview/latest.jpg`` is uploaded after every frame, by every chunk); an earlier,
failed attempt's files are not listed. The SDK's download then counts and skips by
content (``tests/e2e/test_cli_results_e2e.py`` runs the CLI on real jobs)."""

from __future__ import annotations

import hashlib

from parallel_pilot.client.job_files import FARM_OUTPUTS, outputs_to_download
from parallel_pilot.core.protocol import OutputInfo
from parallel_pilot.kinds.render.assemble import VIDEO_FRAMES_PREFIX
from parallel_pilot.kinds.render.chunk import PREVIEW_OUTPUT, SCENE_META_PATH
from tests.integration.conftest import Coordinator

API = "/api/v1"


def put_output(coord: Coordinator, worker: dict[str, str], task: dict, path: str,
               data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    attempt = {"X-Pilot-Attempt": f"{task['task_id']}/{task['attempt']}"}
    assert coord.client.put(f"{API}/blobs/{sha}", headers={**worker, **attempt},
                            content=data).status_code in (200, 201)
    r = coord.client.post(f"{API}/attempts/{task['task_id']}/{task['attempt']}/outputs",
                          headers=worker, json={"path": path, "sha256": sha,
                                                "size": len(data)})
    assert r.status_code == 200, r.text
    return sha


def lease(coord: Coordinator, worker: dict[str, str]) -> list[dict]:
    r = coord.client.post(f"{API}/workers/lease", headers=worker,
                          json={"slots": 8, "wait_seconds": 0})
    return sorted(r.json()["tasks"], key=lambda t: t["task_id"])


def test_each_path_is_listed_once_with_its_latest_output(coordinator: Coordinator) -> None:
    r = coordinator.client.post(f"{API}/jobs", headers=coordinator.user(),
                                json={"kind": "sleep", "params": {"tasks": 2}})
    job_id = r.json()["id"]
    worker = coordinator.register_worker(kinds=["sleep"])
    first, second = lease(coordinator, worker)

    # the first attempt of the first task writes a frame, then fails; it is retried
    put_output(coordinator, worker, first, "frames/0001.png", b"frame 1, attempt 1")
    put_output(coordinator, worker, first, "only-in-attempt-1.txt", b"lost")
    fail = coordinator.client.post(
        f"{API}/attempts/{first['task_id']}/{first['attempt']}/fail", headers=worker,
        json={"reason": "crashed", "retryable": True})
    assert fail.status_code == 200
    [first] = lease(coordinator, worker)
    assert first["attempt"] == 2

    put_output(coordinator, worker, first, "frames/0001.png", b"frame 1, attempt 2")
    put_output(coordinator, worker, first, "preview/latest.jpg", b"preview of 1")
    put_output(coordinator, worker, second, "frames/0002.png", b"frame 2")
    put_output(coordinator, worker, second, "preview/latest.jpg", b"preview of 2")
    latest = put_output(coordinator, worker, first, "preview/latest.jpg", b"preview of 1 b")

    listed = coordinator.client.get(f"{API}/jobs/{job_id}/outputs",
                                    headers=coordinator.user()).json()["outputs"]
    assert [o["path"] for o in listed] == ["frames/0001.png", "frames/0002.png",
                                           "preview/latest.jpg"]
    by_path = {o["path"]: o for o in listed}
    assert by_path["preview/latest.jpg"]["sha256"] == latest
    assert by_path["frames/0001.png"]["sha256"] == hashlib.sha256(
        b"frame 1, attempt 2").hexdigest()


def test_a_download_leaves_out_a_renders_files_for_the_farm() -> None:
    def out(path: str, sha: str = "a" * 64) -> OutputInfo:
        return OutputInfo(path=path, sha256=sha, size=1, task_id=1)

    # the prefixes are those the render kind writes
    assert PREVIEW_OUTPUT.startswith(FARM_OUTPUTS["render"])
    assert SCENE_META_PATH.startswith(FARM_OUTPUTS["render"])
    assert VIDEO_FRAMES_PREFIX in FARM_OUTPUTS["render"]
    listing = [out("frames/0001.png"), out(PREVIEW_OUTPUT, "b" * 64),
               out(PREVIEW_OUTPUT, "c" * 64), out(SCENE_META_PATH),
               out("video-frames/0001.png"), out("video.mp4")]
    wanted, left_out = outputs_to_download("render", listing)
    assert [o.path for o in wanted] == ["frames/0001.png", "video.mp4"]
    assert [o.path for o in left_out] == [PREVIEW_OUTPUT, SCENE_META_PATH,
                                          "video-frames/0001.png"]
    everything, none = outputs_to_download("render", listing, everything=True)
    assert len(everything) == 5 and not none
    assert [o.sha256 for o in everything if o.path == PREVIEW_OUTPUT] == ["c" * 64]
    # other kinds keep every path (a sweep's items/<item>/preview/ is a user's file)
    sweep, _ = outputs_to_download("sweep", [out("items/1/preview/x.png"), out("meta/a")])
    assert [o.path for o in sweep] == ["items/1/preview/x.png", "meta/a"]
