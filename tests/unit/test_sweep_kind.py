"""The sweep kind: parameter validation, planning, running a command, collecting files."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import FinishedTask, parse_params, task_payload
from parallel_pilot.kinds.sweep import SweepParams

SHA = "a" * 64


def test_plan_one_task_per_item() -> None:
    kind = get_kind("sweep")
    params = parse_params(kind, {"command": ["echo", "{item}"], "items": "1-3,x",
                                 "files": {"sim.py": SHA}})
    specs = kind.plan(params)
    assert [s.payload for s in specs] == [{"item": i} for i in ["1", "2", "3", "x"]]
    assert all(s.inputs == {"sim.py": SHA} and not s.depends_on for s in specs)
    # the command is stored once, in the job's parameters; a lease carries it again
    stored = params.model_dump(mode="json")
    assert task_payload(kind, stored, specs[3].payload) == {
        "item": "x", "command": ["echo", "{item}"], "collect": [], "timeout_seconds": None,
        "output_cap": 64 * 1024}
    # a task stored before the split (whole payload) leases as it was
    whole = {"item": "1", "command": ["old"], "collect": ["*.txt"], "timeout_seconds": 5,
             "output_cap": 10}
    assert task_payload(kind, stored, whole) == whole
    assert kind.input_blobs(params) == {"sim.py": SHA}


@pytest.mark.parametrize("params, words", [
    ({"command": [], "items": "1"}, "command"),
    ({"command": ["x"], "items": ["a", "a"]}, "unique"),
    ({"command": ["x"], "items": "1", "files": {"sim.py": "nothex"}}, "SHA-256"),
    ({"command": ["x"], "items": "1", "collect": ["../out"]}, "relative path"),
])
def test_invalid_params(params: dict, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        parse_params(get_kind("sweep"), params)


class FakeContext:
    def __init__(self, workdir: Path, inputs: dict[str, bytes]) -> None:
        self.workdir = workdir
        self.stop_event = threading.Event()
        self.sandbox = False
        self.gpus: tuple[int, ...] | None = None  # no worker gives GPUs here
        self.inputs = inputs
        self.lines: list[str] = []
        self.uploaded: dict[str, bytes] = {}

    def input_path(self, name: str) -> Path:
        raise NotImplementedError

    def copy_input(self, name: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.inputs[name])
        return dest

    def progress(self, fraction: float | None, message: str | None = None) -> None:
        pass

    def log(self, line: str) -> None:
        self.lines.append(line)

    def upload_output(self, path: str, file: Path) -> str:
        self.uploaded[path] = file.read_bytes()
        return "f" * 64


SIM = b"""
import json, os, sys
seed = int(sys.argv[1])
os.makedirs("out", exist_ok=True)
json.dump({"seed": seed, "square": seed * seed}, open("out/r.json", "w"))
print("value", seed * seed)
print("warn", file=sys.stderr)
sys.exit(3 if seed == 4 else 0)
"""


def lease_for(item: str, collect: list[str]) -> TaskLease:
    return TaskLease(task_id=1, attempt=1, job_id=1, kind="sweep", name=f"item {item}",
                     payload={"item": item, "command": [sys.executable, "sim.py", "{item}"],
                              "collect": collect, "timeout_seconds": 30, "output_cap": 1000},
                     inputs={"sim.py": SHA}, lease_expires_at=0, heartbeat_seconds=1)


def test_run_substitutes_item_and_collects(tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path, {"sim.py": SIM})
    result = get_kind("sweep").run(lease_for("4", ["out/*.json"]), ctx)
    assert result["exit_code"] == 3
    assert result["stdout"] == "value 16\n" and result["stderr"] == "warn\n"
    assert list(result["files"]) == ["out/r.json"]
    assert json.loads(ctx.uploaded["items/4/out/r.json"]) == {"seed": 4, "square": 16}
    assert "value 16" in ctx.lines


def test_item_is_one_argument_never_a_shell(tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path, {"sim.py": b""})
    task = lease_for("x", [])
    task.payload["command"] = [sys.executable, "-c", "import sys; print(sys.argv[1:])",
                               "{item}; touch hacked"]
    result = get_kind("sweep").run(task, ctx)
    assert result["stdout"].strip() == "['x; touch hacked']"
    assert not (tmp_path / "hacked").exists()


def test_missing_program_gives_exit_127(tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path, {"sim.py": b""})
    task = lease_for("1", [])
    task.payload["command"] = ["definitely-not-a-program-xyz"]
    result = get_kind("sweep").run(task, ctx)
    assert result["exit_code"] == 127 and "cannot run" in result["stderr"]


def test_stop_event_kills_the_command(tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path, {"sim.py": b""})
    task = lease_for("1", [])
    task.payload["command"] = [sys.executable, "-c", "import time; time.sleep(60)"]
    threading.Timer(0.3, ctx.stop_event.set).start()
    result = get_kind("sweep").run(task, ctx)
    assert result["seconds"] < 10 and result["exit_code"] != 0


def test_finalize_writes_results_in_plan_order() -> None:
    kind = get_kind("sweep")
    params = SweepParams(command=["x"], items=["b", "a"])
    tasks = [FinishedTask(1, "item a", {"item": "a"}, {"item": "a", "exit_code": 1,
                                                        "stdout": "", "stderr": "e",
                                                        "files": {}}),
             FinishedTask(0, "item b", {"item": "b"}, {"item": "b", "exit_code": 0,
                                                        "stdout": "o", "stderr": "",
                                                        "files": {"r.txt": SHA}})]
    lines = kind.finalize(params, tasks)["results.jsonl"].decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"item": "b", "exit_code": 0, "stdout": "o", "stderr": "", "files": ["r.txt"]},
        {"item": "a", "exit_code": 1, "stdout": "", "stderr": "e", "files": []},
    ]
