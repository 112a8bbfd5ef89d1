"""Choosing a render device (pure), reading the probe's line, merging ``nvidia-smi`` memory,
the scheduler's ``render_gpu`` match, and the detection's failure paths, with no Blender
and no GPU."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from parallel_pilot.core.protocol import Capabilities, Gpu, RenderDevice
from parallel_pilot.core.requirements import Requirements, satisfies, unmet
from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import parse_params
from parallel_pilot.kinds.render import devices
from parallel_pilot.kinds.render.blender import BlenderFailed, BlenderInstall
from parallel_pilot.kinds.render.devices import (
    best_backend,
    choose_device,
    describe_choice,
    detect_render_devices,
    detect_render_devices_for_worker,
    parse_probe,
    render_device,
    with_memory,
)
from parallel_pilot.worker.capabilities import parse_nvidia_smi

GIB = 1024 ** 3
CPU = RenderDevice(type="CPU", name="AMD EPYC", id="CPU")
# one RTX card as Blender lists it under CUDA and again under OptiX (ids differ)
RTX_CUDA = RenderDevice(type="CUDA", name="NVIDIA GeForce RTX 4090",
                        id="CUDA_NVIDIA GeForce RTX 4090_0000:01:00")
RTX_OPTIX = RenderDevice(type="OPTIX", name="NVIDIA GeForce RTX 4090",
                         id="CUDA_NVIDIA GeForce RTX 4090_0000:01:00_OptiX")
H200_CUDA = RenderDevice(type="CUDA", name="NVIDIA H200", id="CUDA_NVIDIA H200_0000:41:00")
RADEON = RenderDevice(type="HIP", name="AMD Radeon RX 7900 XTX", id="HIP_AMD Radeon_0000:03:00")
ARC = RenderDevice(type="ONEAPI", name="Intel(R) Arc(TM) A770", id="ONEAPI_Intel Arc_0000:05:00")
M2 = RenderDevice(type="METAL", name="Apple M2 Max", id="METAL_Apple M2 Max")


# ---------------------------------------------------------------- choose_device


def test_cpu_wish_renders_on_the_cpu_even_on_a_gpu_worker() -> None:
    assert choose_device("cpu", [RTX_CUDA, RTX_OPTIX, CPU]) == {"type": "CPU"}
    assert choose_device("cpu", []) == {"type": "CPU"}


@pytest.mark.parametrize("wish", ["any", "gpu"])
def test_optix_is_preferred_over_cuda_with_the_optix_ids(wish: str) -> None:
    device = choose_device(wish, [CPU, RTX_CUDA, RTX_OPTIX])
    assert device == {"type": "OPTIX", "ids": [RTX_OPTIX.id]}
    assert RTX_CUDA.id not in device["ids"]  # a CUDA id would enable nothing under OptiX


@pytest.mark.parametrize("wish", ["any", "gpu"])
def test_cuda_alone_uses_every_cuda_card(wish: str) -> None:
    device = choose_device(wish, [RTX_CUDA, H200_CUDA, CPU])
    assert device == {"type": "CUDA", "ids": [RTX_CUDA.id, H200_CUDA.id]}


@pytest.mark.parametrize(("present", "expected"), [
    ([RADEON, ARC, M2, CPU], "HIP"),
    ([ARC, M2, CPU], "ONEAPI"),
    ([M2, CPU], "METAL"),
    ([RADEON, RTX_CUDA], "CUDA"),
    ([M2, RADEON, RTX_OPTIX, RTX_CUDA], "OPTIX"),
])
def test_backends_are_preferred_in_order(present: list[RenderDevice], expected: str) -> None:
    device = choose_device("gpu", present)
    assert device["type"] == expected
    assert device["ids"] == [d.id for d in present if d.type == expected]
    assert best_backend(present) == expected


@pytest.mark.parametrize("present", [[], [CPU]])
def test_any_without_a_gpu_renders_on_the_cpu(present: list[RenderDevice]) -> None:
    assert choose_device("any", present) == {"type": "CPU"}
    assert best_backend(present) is None


@pytest.mark.parametrize("present", [[], [CPU]])
def test_gpu_without_a_gpu_fails_retryably_saying_why(present: list[RenderDevice]) -> None:
    with pytest.raises(BlenderFailed, match="no GPU") as caught:
        choose_device("gpu", present)
    assert ("AMD EPYC" if present else "no device at all") in str(caught.value)


def test_an_unknown_wish_is_the_tasks_fault() -> None:
    with pytest.raises(InvalidInput, match="cpu, gpu, any"):
        choose_device("tpu", [RTX_CUDA])


def test_the_choice_is_described_with_the_card_names() -> None:
    present = [CPU, RTX_CUDA, RTX_OPTIX]
    assert describe_choice(choose_device("gpu", present), present) == \
        "OPTIX: NVIDIA GeForce RTX 4090"
    assert describe_choice({"type": "CPU"}, present) == "CPU"


# ---------------------------------------------------------------- render_device


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch) -> list[RenderDevice]:
    """render_device's detection replaced by a list the test fills in."""
    found: list[RenderDevice] = []
    install = BlenderInstall("module", sys.executable, "5.0.1")
    monkeypatch.setattr(devices, "installed_blender", lambda: install)
    monkeypatch.setattr(devices, "probe_devices", lambda _install: tuple(found))
    return found


def test_render_device_uses_the_detected_devices(probed: list[RenderDevice]) -> None:
    probed.extend([CPU, RTX_CUDA, RTX_OPTIX])
    assert render_device("any") == {"type": "OPTIX", "ids": [RTX_OPTIX.id]}
    assert render_device("cpu") == {"type": "CPU"}


def test_render_device_on_a_cpu_worker(probed: list[RenderDevice]) -> None:
    probed.append(CPU)
    assert render_device("any") == {"type": "CPU"}
    with pytest.raises(BlenderFailed):
        render_device("gpu")


def test_render_device_without_blender(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "installed_blender", lambda: None)
    assert render_device("any") == {"type": "CPU"}
    assert detect_render_devices_for_worker([Gpu(name="NVIDIA H200")]) == []


# ---------------------------------------------------------------- probe output


def probe_line(entries: list[dict], errors: dict | None = None) -> str:
    return json.dumps({"devices": entries, "errors": errors or {}})


def test_the_probe_line_is_read_into_devices() -> None:
    found, errors = parse_probe(probe_line(
        [{"type": "OPTIX", "name": RTX_OPTIX.name, "id": RTX_OPTIX.id},
         {"type": "CPU", "name": "AMD EPYC", "id": "CPU"}],
        {"METAL": "ValueError: Device \"METAL\" not known."}))
    assert found == [RTX_OPTIX, CPU]
    assert errors == {"METAL": "ValueError: Device \"METAL\" not known."}


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", "null",
                                  json.dumps({"devices": "CUDA"})])
def test_an_unreadable_probe_line_means_no_device(text: str) -> None:
    assert parse_probe(text)[0] == []


def test_malformed_entries_are_dropped_and_the_list_is_capped() -> None:
    entries: list = [{"type": "CUDA"}, "CUDA", {"type": "X" * 50, "name": "n"}, None]
    entries += [{"type": "CUDA", "name": f"card {i}", "id": str(i)} for i in range(100)]
    found, _ = parse_probe(probe_line(entries))
    assert len(found) == devices.MAX_RENDER_DEVICES
    assert found[0] == RenderDevice(type="CUDA", name="card 0", id="0")
    Capabilities(cpu_cores=1, ram_bytes=0, render_devices=found)  # what registering sends


# ---------------------------------------------------------------- memory


def test_nvidia_smi_memory_is_merged_by_name() -> None:
    gpus = parse_nvidia_smi("NVIDIA GeForce RTX 4090, 24564\nNVIDIA H200, 143771\n")
    merged = with_memory([CPU, RTX_CUDA, RTX_OPTIX, H200_CUDA, RADEON], gpus)
    memory = {(d.type, d.name): d.memory_bytes for d in merged}
    assert memory[("CUDA", RTX_CUDA.name)] == memory[("OPTIX", RTX_OPTIX.name)] == 24564 * 2**20
    assert memory[("CUDA", H200_CUDA.name)] == 143771 * 2**20
    assert memory[("CPU", "AMD EPYC")] is None  # nvidia-smi knows only NVIDIA cards
    assert memory[("HIP", RADEON.name)] is None
    assert [d.id for d in merged] == [d.id for d in [CPU, RTX_CUDA, RTX_OPTIX, H200_CUDA,
                                                      RADEON]]


def test_names_match_despite_case_spacing_and_a_prefix() -> None:
    gpus = [Gpu(name="nvidia  h200", memory_bytes=141 * GIB)]
    assert with_memory([H200_CUDA], gpus)[0].memory_bytes == 141 * GIB
    short = RenderDevice(type="CUDA", name="GeForce RTX 4090", id="c0")
    gpus = [Gpu(name="NVIDIA GeForce RTX 4090", memory_bytes=24 * GIB)]
    assert with_memory([short], gpus)[0].memory_bytes == 24 * GIB


def test_unknown_or_ambiguous_memory_stays_unknown() -> None:
    gpus = parse_nvidia_smi("NVIDIA GeForce RTX 4090, [N/A]\n")
    assert with_memory([RTX_CUDA], gpus)[0].memory_bytes is None
    two = [Gpu(name="NVIDIA GeForce RTX 3080", memory_bytes=10 * GIB),
           Gpu(name="NVIDIA GeForce RTX 3080 Ti", memory_bytes=12 * GIB)]
    card = RenderDevice(type="CUDA", name="RTX 3080", id="c0")
    assert with_memory([card], two)[0].memory_bytes is None
    assert with_memory([RTX_CUDA], [])[0].memory_bytes is None


def test_memory_blender_reported_is_kept() -> None:
    known = RTX_CUDA.model_copy(update={"memory_bytes": 5})
    gpus = [Gpu(name=RTX_CUDA.name, memory_bytes=24 * GIB)]
    assert with_memory([known], gpus)[0].memory_bytes == 5


# ---------------------------------------------------------------- detection failures


def fake_blender(tmp_path: Path, script: str) -> BlenderInstall:
    exe = tmp_path / "blender"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return BlenderInstall("executable", str(exe), "5.0.1")


@pytest.fixture(autouse=True)
def fresh_probe_cache() -> Iterator[None]:
    devices.probe_devices.cache_clear()
    yield
    devices.probe_devices.cache_clear()


def test_a_blender_that_fails_reports_no_device(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    install = fake_blender(tmp_path, "echo 'Error: no display' >&2\nexit 3\n")
    with caplog.at_level(logging.WARNING, logger=devices.__name__):
        assert detect_render_devices(install) == []
    assert "exited with code 3" in caplog.text and "no display" in caplog.text


def test_a_blender_that_hangs_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(devices, "PROBE_TIMEOUT_SECONDS", 0.3)
    install = fake_blender(tmp_path, "exec sleep 30\n")
    with caplog.at_level(logging.WARNING, logger=devices.__name__):
        assert detect_render_devices(install) == []
    assert "took more than" in caplog.text


def test_a_missing_blender_reports_no_device(tmp_path: Path) -> None:
    install = BlenderInstall("executable", str(tmp_path / "nowhere" / "blender"), None)
    assert detect_render_devices(install) == []


def test_the_probe_line_is_found_among_blenders_own(tmp_path: Path) -> None:
    line = probe_line([{"type": "CUDA", "name": H200_CUDA.name, "id": H200_CUDA.id},
                       {"type": "CPU", "name": "AMD EPYC", "id": "CPU"}])
    install = fake_blender(tmp_path, "echo 'Blender 5.0.1'\necho 'CUEW initialization'\n"
                           f"echo '{devices.PROBE_TAG} {line}'\necho 'Blender quit'\n")
    gpus = [Gpu(name="NVIDIA H200", memory_bytes=141 * GIB)]
    found = detect_render_devices(install, gpus)
    assert [d.type for d in found] == ["CUDA", "CPU"]
    assert found[0].memory_bytes == 141 * GIB
    (tmp_path / "blender").write_text("#!/bin/sh\nexit 1\n")  # a second call: cached
    assert detect_render_devices(install) == [d.model_copy(update={"memory_bytes": None})
                                              for d in found]


def test_the_worker_detection_uses_the_installed_blender(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = probe_line([{"type": "OPTIX", "name": RTX_OPTIX.name, "id": RTX_OPTIX.id}])
    install = fake_blender(tmp_path, f"echo '{devices.PROBE_TAG} {line}'\n")
    monkeypatch.setattr(devices, "installed_blender", lambda: install)
    assert detect_render_devices_for_worker() == [RTX_OPTIX]


# ---------------------------------------------------------------- scheduling


def caps(*render_devices: RenderDevice) -> Capabilities:
    return Capabilities(cpu_cores=4, ram_bytes=8 * GIB, blender_version="5.0.1",
                        render_devices=list(render_devices))


def test_render_gpu_needs_a_device_other_than_the_cpu() -> None:
    needs = Requirements(render_gpu=True, min_blender="5.0")
    assert unmet(needs, caps()) == ["no GPU for Cycles"]
    assert unmet(needs, caps(CPU)) == ["no GPU for Cycles"]
    for device in (RTX_CUDA, RTX_OPTIX, RADEON, ARC, M2):
        assert unmet(needs, caps(CPU, device)) == []


def test_render_gpu_is_not_the_nvidia_smi_gpu_requirement() -> None:
    # nvidia-smi sees a card, Blender does not (no driver for Cycles): not a render GPU
    worker = caps(CPU).model_copy(update={"gpus": [Gpu(name="NVIDIA H200")]})
    assert unmet(Requirements(render_gpu=True), worker) == ["no GPU for Cycles"]
    assert unmet(Requirements(gpu=True), worker) == []


def test_cpu_and_any_jobs_run_anywhere() -> None:
    assert satisfies({"min_blender": "5.0"}, caps())
    assert satisfies({"min_blender": "5.0"}, caps(CPU, RTX_OPTIX))
    assert not satisfies({"min_blender": "5.0", "render_gpu": True}, caps(CPU))


@pytest.mark.parametrize(("wish", "on_cpu_worker"), [("gpu", False), ("any", True),
                                                     ("cpu", True)])
def test_planned_chunks_go_to_workers_that_can_render_them(wish: str,
                                                           on_cpu_worker: bool) -> None:
    kind = get_kind("render")
    specs = kind.plan(parse_params(kind, {"scene": "b" * 64, "frames": "1-2",
                                          "device": wish}))
    chunk = specs[0].requirements
    assert satisfies(chunk, caps(CPU)) is on_cpu_worker
    assert satisfies(chunk, caps(CPU, RTX_CUDA, RTX_OPTIX))


def test_pilot_workers_shows_the_gpus_cycles_renders_on() -> None:
    from parallel_pilot.client.cli.jobs import render_gpus
    from parallel_pilot.core.protocol import Capabilities, RenderDevice

    caps = Capabilities(cpu_cores=1, ram_bytes=1, render_devices=[
        RenderDevice(type="CPU", name="EPYC"), RenderDevice(type="OPTIX", name="H200", id="a"),
        RenderDevice(type="OPTIX", name="H200", id="b"), RenderDevice(type="CUDA", name="x")])
    assert render_gpus(caps) == "OPTIX:2,CUDA:1"
    assert render_gpus(Capabilities(cpu_cores=1, ram_bytes=1)) == "-"
