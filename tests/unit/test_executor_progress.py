"""``Client.wait`` with a progress callback or bar, and blob uploads by bytes, against the
in-memory coordinator."""

from __future__ import annotations

import hashlib
import io

import pytest

from parallel_pilot.client import Client
from parallel_pilot.client.fake_coordinator import FAKE_TOKEN, FakeCoordinator
from parallel_pilot.client.progress import JobProgressBar
from parallel_pilot.core.protocol import JobInfo
from parallel_pilot.core.states import JobState


@pytest.fixture
def fake() -> FakeCoordinator:
    return FakeCoordinator()


@pytest.fixture
def client(fake: FakeCoordinator) -> Client:
    return Client("http://fake", FAKE_TOKEN, transport=fake.transport(), sleep=lambda s: None)


def test_wait_calls_the_progress_callback_and_on_update(fake: FakeCoordinator,
                                                         client: Client) -> None:
    job = client.submit("sleep", {"tasks": 2})
    fake.script[job.id] = [JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED]
    progress: list[JobState] = []
    updates: list[JobState] = []
    done = client.wait(job.id, progress=lambda info: progress.append(info.state),
                       on_update=lambda info: updates.append(info.state))
    assert done.state == JobState.COMPLETED
    assert progress == updates == [JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED]


def test_the_bar_prints_plain_lines_when_not_in_a_terminal(fake: FakeCoordinator,
                                                            client: Client) -> None:
    job = client.submit("sleep", {"tasks": 2})
    fake.script[job.id] = [JobState.RUNNING, JobState.RUNNING, JobState.COMPLETED]
    out = io.StringIO()
    with JobProgressBar(job.id, stream=out) as bar:
        client.wait(job.id, progress=bar.update)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"job {job.id} running: 0/2 tasks"
    assert lines[-1] == f"job {job.id} completed: 2/2 tasks" and len(lines) == 2


def test_the_bar_draws_with_rich_in_a_terminal(fake: FakeCoordinator) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    info = JobInfo.model_validate({
        "id": 5, "name": "j", "kind": "python", "state": "running", "owner": "me",
        "priority": 0, "params": {}, "created_at": 0, "started_at": None, "finished_at": None,
        "error": None, "tasks_total": 4, "tasks_done": 1, "task_counts": {}, "progress": 0.25,
        "active_workers": 1, "eta_seconds": None})
    with JobProgressBar(5, stream=out) as bar:
        assert bar.live
        bar.update(info)
    assert "job 5 running" in out.getvalue() and "1/4 tasks" in out.getvalue()


def test_upload_bytes_skips_what_the_coordinator_has(fake: FakeCoordinator,
                                                     client: Client) -> None:
    data = b"cloudpickled function"
    sha = client.upload_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert client.upload_bytes(data) == sha
    assert [r.method for r in fake.requests if r.path.endswith(sha)] == ["HEAD", "PUT", "HEAD"]
    assert client.download_bytes(sha) == data
