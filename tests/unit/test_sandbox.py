"""The bwrap command line a sandboxed task runs under, and the sandbox requirement."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from parallel_pilot.client import Client
from parallel_pilot.client.fake_coordinator import FAKE_TOKEN, FakeCoordinator
from parallel_pilot.core.protocol import Capabilities
from parallel_pilot.core.requirements import Requirements, satisfies, unmet
from parallel_pilot.core.settings import WorkerSettings
from parallel_pilot.kinds import sandbox
from parallel_pilot.kinds.sandbox import bwrap_argv, interpreter_paths
from parallel_pilot.worker.capabilities import detect_capabilities


def pairs(argv: list[str], option: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == option]


def test_argv_isolates_and_runs_the_command_last() -> None:
    argv = bwrap_argv(["python3", "sim.py", "--seed", "4"], Path("/srv/work/task-1"),
                      bwrap="/usr/bin/bwrap", readable=())
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-all", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert "--share-net" not in argv
    sep = argv.index("--")
    assert argv[sep + 1:] == ["python3", "sim.py", "--seed", "4"]
    options = argv[:sep]
    assert pairs(options, "--ro-bind")[0] == ("/", "/")
    assert pairs(options, "--bind") == [("/srv/work/task-1", "/srv/work/task-1")]
    assert options[options.index("--chdir") + 1] == "/srv/work/task-1"
    assert options[options.index("--tmpfs") + 1] == "/tmp"
    assert options[options.index("--proc") + 1] == "/proc"
    assert options[options.index("--dev") + 1] == "/dev"


def test_workdir_under_tmp_is_bound_after_the_private_tmp() -> None:
    argv = bwrap_argv(["true"], Path("/tmp/pilot-task-1"), readable=())
    # bwrap applies mounts in order: the workdir must come back on top of the tmpfs
    assert argv.index("--tmpfs") < argv.index("--bind")
    assert ("/tmp/pilot-task-1", "/tmp/pilot-task-1") in pairs(argv, "--bind")


def test_interpreter_under_tmp_stays_readable() -> None:
    argv = bwrap_argv(["true"], Path("/srv/w"),
                      readable=[Path("/tmp/venv"), Path("/usr"), Path("/srv/w/inner")])
    assert pairs(argv, "--ro-bind-try") == [("/tmp/venv", "/tmp/venv")]
    assert argv.index("--tmpfs") < argv.index("--ro-bind-try")
    # the read-only root already covers paths outside /tmp; nothing re-binds them writable
    assert pairs(argv, "--bind") == [("/srv/w", "/srv/w")]


def test_default_readable_paths_hold_the_running_interpreter() -> None:
    paths = interpreter_paths()
    exe = Path(sys.executable).resolve()
    assert any(p == exe.parent or p in exe.parents for p in paths)


def test_item_argument_is_never_a_bwrap_option() -> None:
    argv = bwrap_argv(["echo", "--bind", "/", "/"], Path("/srv/w"), readable=())
    assert pairs(argv[:argv.index("--")], "--bind") == [("/srv/w", "/srv/w")]


def test_requirement_sandbox() -> None:
    plain = Capabilities(cpu_cores=1, ram_bytes=1)
    boxed = Capabilities(cpu_cores=1, ram_bytes=1, sandbox=True)
    assert unmet(Requirements(sandbox=True), plain) == ["no sandbox"]
    assert unmet(Requirements(sandbox=True), plain, trusted=True) == ["no sandbox"]
    # a sandbox is the worker's claim: it counts only for a worker an admin trusts
    assert unmet(Requirements(sandbox=True), boxed) == [
        "sandbox claimed, but no admin marked the worker trusted"]
    assert unmet(Requirements(sandbox=True), boxed, trusted=True) == []
    assert satisfies({"sandbox": True}, boxed, trusted=True)
    assert not satisfies({"sandbox": True}, boxed)
    assert not satisfies({"sandbox": True}, plain, trusted=True)
    assert satisfies({}, plain) and satisfies({"sandbox": False}, plain)


def test_capabilities_report_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("parallel_pilot.worker.capabilities.detect_gpus", lambda: [])
    monkeypatch.setattr("parallel_pilot.worker.capabilities.detect_blender", lambda: None)
    assert detect_capabilities(WorkerSettings(sandbox=True)).sandbox is True
    assert detect_capabilities(WorkerSettings()).sandbox is False


def test_unavailable_when_bwrap_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    reason = sandbox.sandbox_unavailable_reason()
    assert reason is not None and "bwrap" in reason


def test_worker_sandbox_flag_without_bwrap_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from parallel_pilot.client.cli.server import worker_command

    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    result = CliRunner().invoke(worker_command, ["--sandbox", "--join-token", "x",
                                                 "--allow", "sweep"])
    assert result.exit_code == 2, result.output
    assert "bwrap" in result.output


def test_sdk_require_sandbox_sets_the_requirement() -> None:
    fake = FakeCoordinator()
    client = Client("http://fake", FAKE_TOKEN, transport=fake.transport())
    client.submit_sweep(["echo", "{item}"], "1-2", require_sandbox=True)
    client.submit_sweep(["echo", "{item}"], "1-2")
    first, second = fake.bodies("POST", "/jobs")
    assert first["requirements"] == {"sandbox": True}
    assert not second["requirements"]
