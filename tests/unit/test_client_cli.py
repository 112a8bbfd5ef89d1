"""The `pilot` command against an in-memory coordinator (no sockets)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from parallel_pilot.client import Client
from parallel_pilot.client.cli import cli, common
from parallel_pilot.client.cli.common import CliState
from parallel_pilot.client.fake_coordinator import FAKE_TOKEN, FakeCoordinator, fake_worker
from parallel_pilot.core.settings import ClientSettings
from parallel_pilot.core.states import JobState


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCoordinator:
    fake = FakeCoordinator()

    def make_client(server: str | None, token: str | None, settings: ClientSettings) -> Client:
        return Client(server or "http://fake", token or FAKE_TOKEN, settings=settings,
                      transport=fake.transport(), sleep=lambda s: None)

    monkeypatch.setattr(common, "make_client", make_client)
    return fake


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PILOT_SERVER", raising=False)
    monkeypatch.delenv("PILOT_TOKEN", raising=False)
    settings = ClientSettings(config_file=tmp_path / "config.json")

    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), obj=CliState(settings), input=input)

    invoke.settings = settings  # type: ignore[attr-defined]
    return invoke


def test_jobs_json_is_pure_json(fake: FakeCoordinator, run) -> None:
    run("sweep", "--items", "1-3", "--no-wait", "--", "echo", "{item}")
    result = run("jobs", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [j["tasks_total"] for j in data["jobs"]] == [3]
    assert data["jobs"][0]["state"] == "queued"


def test_jobs_table_for_humans(fake: FakeCoordinator, run) -> None:
    run("sweep", "--items", "1-3", "--no-wait", "--", "echo", "{item}")
    result = run("jobs")
    assert result.exit_code == 0
    assert "sweep" in result.stdout and "0/3" in result.stdout


def test_show_json_has_job_and_failures(fake: FakeCoordinator, run) -> None:
    run("sweep", "--items", "1-2", "--no-wait", "--", "false")
    fake.finish(1, JobState.FAILED, "item 1: boom")
    result = run("show", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["id"] == 1 and data["state"] == "failed" and data["error"] == "item 1: boom"
    assert len(data["failures"]) == 2 and data["failures"][0]["error"] == "item 1: boom"
    human = run("show", "1")
    assert "2 failed task(s)" in human.stdout and "boom" in human.stdout


def test_unknown_job_is_one_error_line(fake: FakeCoordinator, run) -> None:
    result = run("show", "42")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no job 42"
    assert result.stdout == ""


def test_no_token_is_a_clear_error(run) -> None:
    result = run("jobs")
    assert result.exit_code == 1
    assert "no token: pass --token, set PILOT_TOKEN or run pilot login" in result.stderr
    assert "Traceback" not in result.output


def test_sweep_no_wait_json(fake: FakeCoordinator, run, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("sim.py").write_text("print('x')\n")
    Path("data").mkdir()
    Path("data/in.txt").write_text("1\n")
    result = run("sweep", "--items", "1-5", "--file", "sim.py", "--file", "data",
                 "--collect", "out/*.csv", "--no-wait", "--json",
                 "--", "python", "sim.py", "--seed", "{item}")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"job": 1, "state": "queued", "tasks": 5}
    params = fake.bodies("POST", "/jobs")[0]["params"]
    assert set(params["files"]) == {"sim.py", "data/in.txt"}
    assert params["command"] == ["python", "sim.py", "--seed", "{item}"]
    assert params["items"] == "1-5"


def test_sweep_items_file(fake: FakeCoordinator, run, tmp_path: Path) -> None:
    items = tmp_path / "items.txt"
    items.write_text("# seeds\nalpha\n\nbeta\n")
    result = run("sweep", "--items-file", str(items), "--no-wait", "--json", "--", "echo")
    assert result.exit_code == 0, result.output
    assert fake.bodies("POST", "/jobs")[0]["params"]["items"] == ["alpha", "beta"]


def test_sweep_missing_file_exits_2_before_any_upload(
    fake: FakeCoordinator, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("present.py").write_text("x")
    result = run("sweep", "--items", "1-3", "--file", "present.py", "--file", "nope.py",
                 "--", "python", "nope.py")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: no such file: nope.py"
    assert fake.requests == []


def test_sweep_waits_and_summarizes(fake: FakeCoordinator, run) -> None:
    fake.script[1] = [JobState.RUNNING, JobState.COMPLETED]
    result = run("sweep", "--items", "1-2", "--", "echo", "{item}")
    assert result.exit_code == 0, result.output
    assert "2 items done" in result.stdout
    assert "pilot download 1" in result.stdout


def test_sweep_exits_non_zero_when_the_job_fails(fake: FakeCoordinator, run) -> None:
    fake.script[1] = [JobState.RUNNING, JobState.FAILED]
    result = run("sweep", "--items", "1-2", "--json", "--", "false")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "failed"


def test_wait_exit_codes(fake: FakeCoordinator, run) -> None:
    run("sweep", "--items", "1", "--no-wait", "--", "true")
    run("sweep", "--items", "1", "--no-wait", "--", "false")
    fake.finish(1, JobState.COMPLETED)
    fake.finish(2, JobState.FAILED, "exit 1")
    ok = run("wait", "1", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["state"] == "completed"
    bad = run("wait", "2", "--json")
    assert bad.exit_code == 1 and json.loads(bad.stdout)["state"] == "failed"


def test_wait_timeout_is_an_error(fake: FakeCoordinator, run) -> None:
    run("sweep", "--items", "1", "--no-wait", "--", "true")
    result = run("wait", "1", "--timeout", "0")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("error: job 1 is still queued after 0 s "
                                          "(0/1 tasks done)")


def test_workers_json_and_table(fake: FakeCoordinator, run) -> None:
    fake.workers.append(fake_worker(name="box-1"))
    data = json.loads(run("workers", "--json").stdout)
    assert data["workers"][0]["name"] == "box-1"
    table = run("workers").stdout
    assert "box-1" in table and "16.0 GiB" in table


def test_download_and_logs(fake: FakeCoordinator, run, tmp_path: Path) -> None:
    from parallel_pilot.core.protocol import LogLine

    run("sweep", "--items", "1", "--no-wait", "--", "true")
    fake.add_output(1, "results.jsonl", b"{}\n")
    fake.logs[1] = [LogLine(id=1, task_id=1000, attempt=1, at=0.0, line="hello")]
    result = run("download", "1", "--out", str(tmp_path / "res"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "res" / "results.jsonl").read_bytes() == b"{}\n"
    assert result.stdout.strip() == str(tmp_path / "res" / "results.jsonl")
    assert run("logs", "1").stdout == "[task 1] hello\n"  # task 1000 is task 1 of job 1
    assert run("logs", "1", "--task", "1").stdout == "hello\n"
    unknown = run("logs", "1", "--task", "2")
    assert unknown.exit_code == 1 and unknown.stderr == "error: job 1 has no task 2\n"


def test_login_checks_the_token_and_saves_it(fake: FakeCoordinator, run) -> None:
    result = run("login", "--server", "http://fake/", input=FAKE_TOKEN + "\n")
    assert result.exit_code == 0, result.output
    saved = json.loads(run.settings.config_file.read_text())
    assert saved == {"server": "http://fake", "token": FAKE_TOKEN}

    run.settings.config_file.unlink()
    bad = run("login", "--server", "http://fake", "--token", "wrong")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ")
    assert not run.settings.config_file.exists()


@pytest.fixture
def fake_agent(monkeypatch: pytest.MonkeyPatch) -> list:
    seen: list = []
    module = types.ModuleType("parallel_pilot.worker.agent")
    module.run_worker = lambda settings: seen.append(settings) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "parallel_pilot.worker.agent", module)
    monkeypatch.delenv("PILOT_ALLOW", raising=False)
    monkeypatch.delenv("PILOT_JOIN_TOKEN", raising=False)
    return seen


def test_worker_unknown_kind_exits_2(fake_agent: list, run) -> None:
    result = run("worker", "--join-token", "j", "--allow", "sleep,bogus")
    assert result.exit_code == 2
    assert "--allow: unknown kind(s) to allow: bogus" in result.stderr
    from parallel_pilot.kinds import known_kinds

    assert f"known kinds: {', '.join(known_kinds())}" in result.stderr
    assert fake_agent == []


def test_worker_runs_no_commands_unless_allowed(fake_agent: list, run) -> None:
    assert run("worker", "--join-token", "j", "--tags", "gpu, fast").exit_code == 0
    assert run("worker", "--join-token", "j", "--allow", "sleep,sweep", "--slots", "2",
               "--server", "http://c:1", "--drain-seconds", "0").exit_code == 0
    default, allowed = fake_agent
    assert default.allow == ["render"] and default.tags == ["gpu", "fast"]
    assert allowed.allow == ["sleep", "sweep"] and allowed.slots == 2
    assert allowed.server == "http://c:1" and allowed.join_token == "j"
    assert allowed.drain_seconds == 0


def test_worker_needs_a_join_token(fake_agent: list, run) -> None:
    result = run("worker")
    assert result.exit_code == 2 and "no join token" in result.stderr


def test_server_flags_override_settings(monkeypatch: pytest.MonkeyPatch, run,
                                        tmp_path: Path) -> None:
    seen: list = []
    module = types.ModuleType("parallel_pilot.coordinator.server")
    module.serve = lambda settings, **kwargs: seen.append(settings)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "parallel_pilot.coordinator.server", module)
    monkeypatch.setenv("PILOT_PORT", "9000")
    monkeypatch.setenv("PILOT_LEASE_SECONDS", "7")
    result = run("server", "--port", "9100", "--data-dir", str(tmp_path / "d"),
                 "--chunk-seconds", "120")
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert settings.port == 9100 and settings.lease_seconds == 7
    assert settings.chunk_seconds == 120
    assert settings.data_dir == tmp_path / "d" and settings.host == "127.0.0.1"


def test_sweep_needs_items(fake: FakeCoordinator, run) -> None:
    result = run("sweep", "--", "echo", "{item}")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: no items: pass --items 1-100 or --items-file FILE"
    both = run("sweep", "--items", "1", "--items-file", "x", "--", "echo")
    assert both.exit_code == 2 and "not both" in both.stderr


def test_sweep_require_sandbox(fake: FakeCoordinator, run) -> None:
    result = run("sweep", "--items", "1-2", "--require-sandbox", "--no-wait", "--json", "--",
                 "echo", "{item}")
    assert result.exit_code == 0, result.output
    assert fake.bodies("POST", "/jobs")[0]["requirements"] == {"sandbox": True}
