"""What a worker reports about its machine: sane values without Blender or a GPU, and the
probes of ``nvidia-smi`` and ``blender`` read correctly when they are there."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path

import pytest

import parallel_pilot
from parallel_pilot.core.settings import WorkerSettings
from parallel_pilot.kinds.render import blender
from parallel_pilot.worker.capabilities import (
    detect_capabilities,
    parse_nvidia_smi,
)


@pytest.fixture
def bare_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A PATH with nothing on it and no ``bpy`` to find."""
    monkeypatch.setenv("PATH", str(tmp_path))
    real_find_spec = blender.importlib.util.find_spec
    monkeypatch.setattr(blender.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bpy" else real_find_spec(name, *a))
    blender.installed_blender.cache_clear()
    yield tmp_path
    blender.installed_blender.cache_clear()


def fake_tool(directory: Path, name: str, script: str) -> None:
    tool = directory / name
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)


def test_runs_without_blender_or_gpu(bare_machine: Path) -> None:
    settings = WorkerSettings(allow=["sleep"], tags=["fast", "eu"], slots=3, join_token="j")
    caps = detect_capabilities(settings)
    assert caps.cpu_cores >= 1 and caps.ram_bytes > 0
    assert caps.gpus == [] and caps.blender_version is None
    assert caps.kinds == ["sleep"] and caps.tags == ["fast", "eu"] and caps.slots == 3
    assert caps.python == platform.python_version()
    assert caps.pilot_version == parallel_pilot.__version__
    assert caps.platform


def test_reads_fake_nvidia_smi_and_blender(bare_machine: Path) -> None:
    fake_tool(bare_machine, "nvidia-smi",
              'echo "NVIDIA H100 80GB HBM3, 81559"\necho "Tesla T4, [N/A]"\n')
    fake_tool(bare_machine, "blender", 'echo "Blender 4.2.3 LTS"\necho "build date: x"\n')
    caps = detect_capabilities(WorkerSettings(join_token="j"))
    assert [g.name for g in caps.gpus] == ["NVIDIA H100 80GB HBM3", "Tesla T4"]
    assert caps.gpus[0].memory_bytes == 81559 * 1024 * 1024
    assert caps.gpus[1].memory_bytes is None
    assert caps.blender_version == "4.2.3"


def test_failing_tools_mean_none(bare_machine: Path) -> None:
    fake_tool(bare_machine, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    fake_tool(bare_machine, "blender", "exit 1\n")
    caps = detect_capabilities(WorkerSettings(join_token="j"))
    assert caps.gpus == [] and caps.blender_version is None


def test_parsers() -> None:
    assert parse_nvidia_smi("\nA, 1024\n") == parse_nvidia_smi("A, 1024")
    assert parse_nvidia_smi("Weird, Name, 2048")[0].name == "Weird, Name"
