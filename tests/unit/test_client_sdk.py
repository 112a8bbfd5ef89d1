"""The SDK against an in-memory coordinator: submission, waiting, downloads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import parallel_pilot
from parallel_pilot.client import Client
from parallel_pilot.client.fake_coordinator import FAKE_TOKEN, FakeCoordinator
from parallel_pilot.core.states import JobState
from parallel_pilot.errors import InvalidInput, JobNotFound, Unauthorized


class FakeClock:
    def __init__(self) -> None:
        self.slept = 0.0

    def sleep(self, seconds: float) -> None:
        self.slept += seconds


@pytest.fixture
def fake() -> FakeCoordinator:
    return FakeCoordinator()


@pytest.fixture
def client(fake: FakeCoordinator) -> Client:
    return Client("http://fake", FAKE_TOKEN, transport=fake.transport(), sleep=FakeClock().sleep)


def test_public_surface() -> None:
    assert "Client" in parallel_pilot.__all__
    assert parallel_pilot.Client is Client


def test_sweep_uploads_each_file_once_and_sends_items_as_given(
    fake: FakeCoordinator, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("sim.py").write_text("print(1)\n")
    Path("data").mkdir()
    Path("data/a.csv").write_text("same\n")
    Path("data/b.csv").write_text("same\n")  # same bytes as a.csv: one upload for both
    already = fake.add_blob(b"known\n")
    Path("known.txt").write_bytes(b"known\n")

    job = client.submit_sweep(
        ["python", "sim.py", "--seed", "{item}"], "1-10,20",
        files=[Path("./sim.py"), Path("data/a.csv"), tmp_path / "data/b.csv", Path("known.txt")],
        collect=["out/*.csv"], timeout_seconds=30, name="seeds",
    )

    puts = [r.path for r in fake.requests if r.method == "PUT"]
    assert sorted(puts) == sorted({f"/blobs/{hashlib.sha256(b).hexdigest()}"
                                   for b in (b"print(1)\n", b"same\n")})
    assert f"/blobs/{already}" not in puts
    (submitted,) = fake.bodies("POST", "/jobs")
    params = submitted["params"]
    assert params["items"] == "1-10,20"  # the coordinator parses it, not the client
    assert params["command"] == ["python", "sim.py", "--seed", "{item}"]
    assert set(params["files"]) == {"sim.py", "data/a.csv", "data/b.csv", "known.txt"}
    assert params["files"]["data/a.csv"] == params["files"]["data/b.csv"]
    assert params["collect"] == ["out/*.csv"] and params["timeout_seconds"] == 30
    assert submitted["name"] == "seeds" and submitted["kind"] == "sweep"
    assert job.tasks_total == 11 and job.state == JobState.QUEUED


def test_sweep_items_as_a_list(fake: FakeCoordinator, client: Client) -> None:
    client.submit_sweep(["echo", "{item}"], ["a", "b"])
    assert fake.bodies("POST", "/jobs")[0]["params"]["items"] == ["a", "b"]


def test_sweep_refuses_names_outside_the_working_directory(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "inside").mkdir()
    (tmp_path / "outside.py").write_text("x")
    monkeypatch.chdir(tmp_path / "inside")
    with pytest.raises(InvalidInput, match="relative path"):
        client.submit_sweep(["python", "x"], "1", files=[Path("../outside.py")])
    with pytest.raises(InvalidInput, match="outside the current directory"):
        client.submit_sweep(["python", "x"], "1", files=[tmp_path / "outside.py"])
    with pytest.raises(InvalidInput, match="no such file"):
        client.submit_sweep(["python", "x"], "1", files={"a.py": tmp_path / "missing.py"})


def test_wrong_token_raises_unauthorized(fake: FakeCoordinator) -> None:
    client = Client("http://fake", "wrong", transport=fake.transport())
    with pytest.raises(Unauthorized):
        client.me()


def test_unknown_job_raises_job_not_found(client: Client) -> None:
    with pytest.raises(JobNotFound, match="no job 99"):
        client.job(99)


def test_wait_returns_when_completed(fake: FakeCoordinator, client: Client) -> None:
    job = client.submit("sleep", {"tasks": 2})
    fake.script[job.id] = [JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED]
    seen: list[JobState] = []
    done = client.wait(job.id, on_update=lambda info: seen.append(info.state))
    assert done.state == JobState.COMPLETED and done.tasks_done == 2
    assert seen == [JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED]


def test_wait_returns_a_failed_job_with_its_error(fake: FakeCoordinator, client: Client) -> None:
    job = client.submit("sleep", {"tasks": 1})
    fake.script[job.id] = [JobState.RUNNING, JobState.FAILED]
    done = client.wait(job.id)
    assert done.state == JobState.FAILED and "failed" in (done.error or "")


def test_wait_is_bounded_by_its_timeout(fake: FakeCoordinator) -> None:
    import time

    client = Client("http://fake", FAKE_TOKEN, transport=fake.transport())
    job = client.submit("sleep", {"tasks": 1})
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="still queued"):
        client.wait(job.id, timeout=0.2, poll_seconds=0.05)
    assert time.monotonic() - started < 5


def test_download_writes_outputs_and_skips_identical_files(
    fake: FakeCoordinator, client: Client, tmp_path: Path
) -> None:
    job = client.submit("sleep", {"tasks": 1})
    fake.add_output(job.id, "results.jsonl", b'{"item": "1"}\n')
    fake.add_output(job.id, "items/1/out/a.csv", b"1,2\n", task_id=1)
    out = tmp_path / "out"
    fetched: list[bool] = []

    paths = client.download(job.id, out, on_file=lambda o, p, f: fetched.append(f))
    assert paths == [out / "results.jsonl", out / "items/1/out/a.csv"]
    assert (out / "items/1/out/a.csv").read_bytes() == b"1,2\n"
    assert fetched == [True, True]

    blob_gets = lambda: [r for r in fake.requests if r.method == "GET"  # noqa: E731
                         and r.path.startswith("/blobs/")]
    before = len(blob_gets())
    (out / "results.jsonl").write_bytes(b"changed locally\n")
    fetched.clear()
    client.download(job.id, out, on_file=lambda o, p, f: fetched.append(f))
    assert fetched == [True, False]  # the changed file again, the identical one not
    assert len(blob_gets()) == before + 1
    assert (out / "results.jsonl").read_bytes() == b'{"item": "1"}\n'


@pytest.mark.parametrize("evil", ["../escape.txt", "/etc/passwd", "items/../../x", "a//b",
                                  "items\\..\\..\\x"])
def test_download_refuses_paths_that_escape(
    fake: FakeCoordinator, client: Client, tmp_path: Path, evil: str
) -> None:
    job = client.submit("sleep", {"tasks": 1})
    fake.add_output(job.id, "fine.txt", b"ok")
    # built without validation, as a misbehaving coordinator would send it
    from parallel_pilot.core.protocol import OutputInfo

    data = b"evil"
    fake.outputs[job.id].append(OutputInfo.model_construct(
        path=evil, sha256=fake.add_blob(data), size=len(data), task_id=None))
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match="refusing output path"):
        client.download(job.id, out)
    assert not out.exists()  # checked before anything is written
    assert not (tmp_path / "escape.txt").exists()


def test_download_refuses_a_symlinked_folder_that_leads_out(
    fake: FakeCoordinator, client: Client, tmp_path: Path
) -> None:
    job = client.submit("sleep", {"tasks": 1})
    fake.add_output(job.id, "items/x.txt", b"x")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "items").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidInput, match="outside"):
        client.download(job.id, out)
    assert not (tmp_path / "elsewhere" / "x.txt").exists()


def test_listing_calls(fake: FakeCoordinator, client: Client) -> None:
    job = client.submit("sleep", {"tasks": 3}, priority=5, name="n")
    assert [j.id for j in client.jobs()] == [job.id]
    assert client.jobs(state="completed") == []
    assert len(client.tasks(job.id)) == 3
    assert client.cancel(job.id).state == JobState.CANCELLED
    assert client.retry(job.id).state == JobState.QUEUED
    assert client.me().name == "admin"
    assert client.workers() == []
    assert fake.bodies("POST", "/jobs")[0]["priority"] == 5


def test_logs_are_fetched_page_by_page(
    fake: FakeCoordinator, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from parallel_pilot.client import sdk
    from parallel_pilot.core.protocol import LogLine

    monkeypatch.setattr(sdk, "LOG_PAGE_LINES", 2)
    job = client.submit("sleep", {"tasks": 1})
    fake.logs[job.id] = [LogLine(id=i, task_id=7 + i % 2, attempt=1, at=float(i), line=f"l{i}")
                         for i in range(1, 6)]
    assert [ln.line for ln in client.logs(job.id)] == ["l1", "l2", "l3", "l4", "l5"]
    assert [ln.line for ln in client.logs(job.id, after=3)] == ["l4", "l5"]
    assert [ln.line for ln in client.logs(job.id, task_id=7)] == ["l2", "l4"]
    assert len(client.logs(job.id, limit=3)) == 3
