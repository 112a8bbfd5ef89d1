"""The render sandbox's command line (kinds/render/sandbox.py over kinds/sandbox.py), the
worker's decision to use it, and how `pilot workers` shows it. No bwrap runs here except
where a test says so; tests/integration/test_render_sandbox.py runs the real thing."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from parallel_pilot.client import Client
from parallel_pilot.client.cli import cli, common
from parallel_pilot.client.cli.common import CliState
from parallel_pilot.client.cli.jobs import sandboxed
from parallel_pilot.client.fake_coordinator import FAKE_TOKEN, FakeCoordinator, fake_worker
from parallel_pilot.core.protocol import Capabilities
from parallel_pilot.core.settings import ClientSettings, WorkerSettings
from parallel_pilot.kinds import sandbox
from parallel_pilot.kinds.render import sandbox as render_sandbox
from parallel_pilot.kinds.render.blender import RENDER_SCRIPT, BlenderInstall
from parallel_pilot.kinds.render.sandbox import (
    RenderSandboxDecision,
    private_folders,
    render_argv,
    render_sandbox_decision,
    sandbox_argv,
    sandbox_env,
)
from parallel_pilot.kinds.sandbox import bwrap_argv
from parallel_pilot.worker.agent import Worker
from parallel_pilot.worker.capabilities import detect_capabilities

BPY = BlenderInstall("module", sys.executable, "5.0.1")


def mounts(argv: list[str]) -> list[tuple[str, ...]]:
    """The mount operations of a bwrap argv in order: (option, path[, path])."""
    ops, i = [], 1
    end = argv.index("--")
    two = {"--bind", "--ro-bind", "--ro-bind-try", "--dev-bind-try", "--setenv"}
    one = {"--tmpfs", "--remount-ro", "--proc", "--dev", "--chdir", "--cap-drop"}
    while i < end:
        if argv[i] in two:
            ops.append((argv[i], argv[i + 1], argv[i + 2]))
            i += 3
        elif argv[i] in one:
            ops.append((argv[i], argv[i + 1]))
            i += 2
        else:
            ops.append((argv[i],))
            i += 1
    return ops


def position(ops: list[tuple[str, ...]], *op: str) -> int:
    return ops.index(op)


def test_hidden_folders_are_empty_read_only_and_what_must_stay_readable_comes_back() -> None:
    argv = bwrap_argv(["true"], Path("/srv/work/task-1"), readable=[Path("/root/venv")],
                      hide=[Path("/root"), Path("/srv/cache"), Path("/srv/work")],
                      read_only=[Path("/srv/work/task-1/project")], writable_tmp=False)
    ops = mounts(argv)
    for hidden in ("/root", "/srv/cache", "/srv/work", "/tmp"):
        # an empty tmpfs first, made read-only once every mount point in it exists
        assert position(ops, "--tmpfs", hidden) < position(ops, "--remount-ro", hidden)
        assert position(ops, "--remount-ro", hidden) > position(
            ops, "--bind", "/srv/work/task-1", "/srv/work/task-1")
    # the venv under the hidden home is bound again, read-only, on top of its tmpfs
    assert (position(ops, "--tmpfs", "/root")
            < position(ops, "--ro-bind-try", "/root/venv", "/root/venv"))
    # the task folder under the hidden work root comes back writable, its project read-only
    assert (position(ops, "--tmpfs", "/srv/work")
            < position(ops, "--bind", "/srv/work/task-1", "/srv/work/task-1")
            < position(ops, "--ro-bind", "/srv/work/task-1/project",
                       "/srv/work/task-1/project"))
    assert [op for op in ops if op[0] == "--bind"] == [
        ("--bind", "/srv/work/task-1", "/srv/work/task-1")]


def test_a_hidden_folder_inside_a_readable_one_stays_hidden() -> None:
    # the blob cache inside a venv that must stay readable (say, both under the home)
    argv = bwrap_argv(["true"], Path("/srv/w"), readable=[Path("/home/ann/venv")],
                      hide=[Path("/home/ann"), Path("/home/ann/venv/cache")])
    ops = mounts(argv)
    assert (position(ops, "--tmpfs", "/home/ann")
            < position(ops, "--ro-bind-try", "/home/ann/venv", "/home/ann/venv")
            < position(ops, "--tmpfs", "/home/ann/venv/cache"))
    assert ("--remount-ro", "/home/ann/venv/cache") in ops


def test_folders_under_a_hidden_one_or_the_workdir_are_not_mounted_twice() -> None:
    argv = bwrap_argv(["true"], Path("/srv/w"), readable=(),
                      hide=[Path("/root"), Path("/root/.cache/blobs"), Path("/tmp/x"),
                            Path("/srv/w/inside")])
    tmpfs = [op[1] for op in mounts(argv) if op[0] == "--tmpfs"]
    assert tmpfs == ["/tmp", "/root"]
    # a home of / (some service users have one) hides nothing
    assert [op for op in mounts(bwrap_argv(["true"], Path("/srv/w"), readable=(),
                                           hide=[Path("/")])) if op[0] == "--tmpfs"] == [
        ("--tmpfs", "/tmp")]
    # the sweep's default keeps /tmp writable (private); only hidden folders go read-only
    assert [op[1] for op in mounts(argv) if op[0] == "--remount-ro"] == ["/root"]


def test_render_argv_runs_blender_last_with_home_and_tmp_in_the_task(tmp_path: Path) -> None:
    workdir = tmp_path / "task"
    workdir.mkdir()
    job = workdir / "render-job.json"
    argv = render_argv(BPY, job, workdir, read_only=[workdir / "project"], bwrap="/b/bwrap")
    assert argv[0] == "/b/bwrap" and "--unshare-all" in argv and "--share-net" not in argv
    assert argv[argv.index("--") + 1:] == BPY.command(RENDER_SCRIPT, job)
    ops = mounts(argv)
    assert ("--setenv", "HOME", str(workdir / "home")) in ops
    assert ("--setenv", "TMPDIR", str(workdir / "tmp")) in ops
    assert (workdir / "home").is_dir() and (workdir / "tmp").is_dir()
    assert ("--remount-ro", "/tmp") in ops  # nothing but the task folder is writable
    assert ("--chdir", str(workdir)) in ops
    for folder in render_sandbox.SYSTEM_PRIVATE:
        if folder.is_dir():
            assert ("--tmpfs", str(folder)) in ops and ("--remount-ro", str(folder)) in ops
    # the render script and the interpreter stay readable: outside every hidden folder,
    # or bound again on top of it
    hidden = [Path(op[1]) for op in ops if op[0] == "--tmpfs"]
    rebound = [Path(op[1]) for op in ops if op[0] == "--ro-bind-try"]
    for needed in (RENDER_SCRIPT.resolve().parent, Path(sys.base_prefix).resolve(),
                   Path(sys.prefix).resolve()):
        if any(needed.is_relative_to(h) for h in hidden):
            assert any(needed.is_relative_to(r) for r in rebound), needed


def test_a_blender_executable_keeps_its_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    exe = home / "blender-4.2" / "blender"
    exe.parent.mkdir(parents=True)
    exe.write_text("")
    install = BlenderInstall("executable", str(exe), "4.2.3")
    workdir = tmp_path / "task"
    workdir.mkdir()
    argv = sandbox_argv(["true"], install, workdir, hide=[home])
    assert ("--ro-bind-try", str(exe.parent), str(exe.parent)) in mounts(argv)


def test_hidden_folders_that_do_not_exist_are_left_out(tmp_path: Path) -> None:
    workdir = tmp_path / "task"
    workdir.mkdir()
    argv = sandbox_argv(["true"], BPY, workdir, hide=[Path("/no/such/folder")])
    assert "/no/such/folder" not in argv


def test_gpu_device_nodes_are_let_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(render_sandbox, "gpu_devices",
                        lambda: [Path("/dev/nvidia0"), Path("/dev/nvidiactl")])
    argv = sandbox_argv(["true"], BPY, tmp_path)
    ops = mounts(argv)
    assert ("--dev-bind-try", "/dev/nvidia0", "/dev/nvidia0") in ops
    assert position(ops, "--dev", "/dev") < position(ops, "--dev-bind-try", "/dev/nvidia0",
                                                     "/dev/nvidia0")


def test_the_worker_settings_stay_outside() -> None:
    env = sandbox_env({"PATH": "/usr/bin", "PILOT_JOIN_TOKEN": "secret", "PILOT_TOKEN": "t",
                       "BLENDER_USER_CONFIG": "/w/c"})
    assert env == {"PATH": "/usr/bin", "BLENDER_USER_CONFIG": "/w/c"}


def test_private_folders_default_to_the_temporary_folder() -> None:
    folders = private_folders(Path("/home/ann"), Path("/home/ann/.cache/pp"), None)
    assert folders == (Path("/home/ann"), Path("/home/ann/.cache/pp"),
                       Path(tempfile.gettempdir()).absolute())
    assert private_folders(Path("/h"), Path("/c"), Path("/w"))[2] == Path("/w")


def test_decision_off_by_the_owner_or_without_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    off = render_sandbox_decision(False, BPY)
    assert off == RenderSandboxDecision(False, "turned off (--no-render-sandbox)")
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    monkeypatch.setattr(render_sandbox, "find_bwrap", lambda: None)
    missing = render_sandbox_decision(True, BPY)
    assert not missing.enabled and missing.reason and "bwrap" in missing.reason


def worker(tmp_path: Path, **settings: object) -> Worker:
    return Worker(WorkerSettings(join_token="j", cache_dir=tmp_path / "cache",
                                 work_dir=tmp_path / "work", **settings))  # type: ignore[arg-type]


def test_a_worker_without_bwrap_says_so_at_start(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    monkeypatch.setattr(render_sandbox, "find_bwrap", lambda: None)
    w = worker(tmp_path)
    assert not w.render_sandbox.enabled
    assert w.private_paths == (Path.home(), tmp_path / "cache", tmp_path / "work")
    monkeypatch.setattr(w, "_loop", lambda: None)
    logger = logging.getLogger("parallel_pilot.worker")
    monkeypatch.setattr(logger, "propagate", True)
    w.request_stop()
    with caplog.at_level(logging.INFO, logger="parallel_pilot.worker"):
        w.run()
    assert "renders run without a sandbox: bwrap (bubblewrap) is not installed" in caplog.text
    monkeypatch.setattr("parallel_pilot.worker.capabilities.detect_gpus", lambda: [])
    caps = detect_capabilities(w.settings, render_sandbox=w.render_sandbox.enabled)
    assert caps.render_sandbox is False


def test_a_worker_that_does_not_render_probes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    def fail(*args: object, **kwargs: object) -> RenderSandboxDecision:
        raise AssertionError("probed")

    monkeypatch.setattr("parallel_pilot.worker.agent.render_sandbox_decision", fail)
    assert worker(tmp_path, allow=["sleep"]).render_sandbox.enabled is False


def test_no_render_sandbox_flag_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from parallel_pilot.client.cli.server import worker_command

    seen: list[WorkerSettings] = []
    monkeypatch.setattr("parallel_pilot.worker.agent.run_worker",
                        lambda settings: seen.append(settings) or 0)
    for args, expected in ((["--no-render-sandbox"], False), ([], True)):
        result = CliRunner().invoke(worker_command, ["--join-token", "x", *args])
        assert result.exit_code == 0, result.output
        assert seen[-1].render_sandbox is expected


def test_pilot_workers_shows_what_each_worker_sandboxes(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    caps = Capabilities(cpu_cores=1, ram_bytes=1)
    assert sandboxed(caps) == "none"
    assert sandboxed(caps.model_copy(update={"render_sandbox": True})) == "render"
    assert sandboxed(caps.model_copy(update={"render_sandbox": True,
                                             "sandbox": True})) == "render,cmd"
    fake = FakeCoordinator()
    boxed = fake_worker(name="boxed")
    boxed.capabilities.render_sandbox = True
    fake.workers += [boxed, fake_worker(worker_id=2, name="plain")]
    monkeypatch.setattr(common, "make_client", lambda server, token, settings: Client(
        "http://fake", FAKE_TOKEN, settings=settings, transport=fake.transport()))
    state = CliState(ClientSettings(config_file=tmp_path / "config.json"))
    table = CliRunner().invoke(cli, ["workers"], obj=state, terminal_width=200).stdout
    assert "SANDBOX" in table
    rows = {line.split()[1]: line.split() for line in table.splitlines()[1:] if line.strip()}
    assert "render" in rows["boxed"] and "none" in rows["plain"]


def test_asking_for_the_render_sandbox_without_bwrap_exits_2(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from parallel_pilot.client.cli.server import worker_command

    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    result = CliRunner().invoke(worker_command, ["--render-sandbox", "--join-token", "x"])
    assert result.exit_code == 2, result.output
    assert "--render-sandbox: bwrap (bubblewrap) is not installed" in result.output
