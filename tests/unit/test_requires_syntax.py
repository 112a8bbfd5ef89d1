"""The one requirements syntax (``--requires``, the SDK's text, the dashboard's field),
``pilot worker --gpus``, the shortfall rule for the new terms and the waiting reasons."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from parallel_pilot.client.cli.common import submit_options
from parallel_pilot.core.protocol import Capabilities, Gpu, RenderDevice
from parallel_pilot.core.requirements import (
    ACCEPTED_TERMS,
    GIB,
    Requirements,
    RequirementsSyntaxError,
    parse_gpus,
    parse_requires,
    parse_size,
    requirements_from,
    unmet,
)
from parallel_pilot.core.waiting import OnlineWorker, explain
from parallel_pilot.errors import InvalidInput


def test_every_term_of_the_issue_parses() -> None:
    assert parse_requires("gpu,vram>=8G,ram>=16G,cores>=4,tag=studio-a,blender>=4.2,sandbox") \
        == {"gpu_count": 1, "min_vram_bytes": 8 * GIB, "min_ram_bytes": 16 * GIB,
            "min_cpu_cores": 4, "tags": ["studio-a"], "min_blender": "4.2", "sandbox": True}


@pytest.mark.parametrize(("text", "fields"), [
    ("", {}),
    ("  ", {}),
    ("gpu=2", {"gpu_count": 2}),
    ("gpus>=3", {"gpu_count": 3}),
    ("gpu=nvidia", {"gpu_vendor": "nvidia", "gpu_count": 1}),
    ("GPU=AMD, vram>=512M", {"gpu_vendor": "amd", "gpu_count": 1,
                             "min_vram_bytes": 512 * 1024 ** 2}),
    ("gpu=2,vram>=8GiB", {"gpu_count": 2, "min_vram_bytes": 8 * GIB}),
    ("device=optix", {"cycles_device": "OPTIX"}),
    ("device=gpu", {"render_gpu": True}),
    ("tag=b,tag=a,tag=b", {"tags": ["a", "b"]}),
    ("ram>=1.5G", {"min_ram_bytes": int(1.5 * GIB)}),
    ("cpus>=2", {"min_cpu_cores": 2}),
    ("blender>=5.0.1", {"min_blender": "5.0.1"}),
])
def test_terms(text: str, fields: dict) -> None:
    assert parse_requires(text) == fields
    Requirements.model_validate(fields)


@pytest.mark.parametrize("bad", ["vrm>=8G", "gpu=purple", "ram=16G", "ram>=lots",
                                 "blender>=new", "tag", "tag=", "sandbox=yes", "cores>=x",
                                 "device=tpu", "gpu=65", "gpu>", "ram<=4G"])
def test_a_bad_term_is_named_and_the_accepted_ones_listed(bad: str) -> None:
    with pytest.raises(RequirementsSyntaxError) as caught:
        parse_requires(f"gpu,{bad}")
    message = caught.value.message
    assert "accepted:" in message and all(term in message for term in ACCEPTED_TERMS)
    if bad != "gpu=65":  # a number out of range is named by the model's message
        assert repr(bad) in message
    assert isinstance(caught.value, InvalidInput)  # the SDK raises it as such


def test_sizes_are_binary() -> None:
    assert parse_size("8G") == parse_size("8GiB") == parse_size("8gb") == 8 * GIB
    assert parse_size("1024") == 1024 and parse_size("1k") == 1024
    with pytest.raises(ValueError):
        parse_size("8 potatoes")


def test_requirements_from_each_form() -> None:
    assert requirements_from(None) == {}
    assert requirements_from("gpu") == {"gpu_count": 1}
    assert requirements_from(Requirements(min_cpu_cores=4)) == {"min_cpu_cores": 4}
    assert requirements_from({"tags": ["x"]}) == {"tags": ["x"]}


def test_the_cli_option_parses_and_refuses_with_the_same_message() -> None:
    @click.command()
    @submit_options
    def cmd(requires: dict, **_: object) -> None:
        click.echo(repr(requires))

    runner = CliRunner()
    ok = runner.invoke(cmd, ["--requires", "gpu,vram>=8G", "--requires", "tag=a"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip() == repr({"gpu_count": 1, "min_vram_bytes": 8 * GIB,
                                      "tags": ["a"]})
    bad = runner.invoke(cmd, ["--requires", "gpu,vrm>=8G"])
    assert bad.exit_code == 2
    assert "cannot read requirement 'vrm>=8G'" in bad.output and "vram>=SIZE" in bad.output


def test_gpus_told_by_hand() -> None:
    assert parse_gpus("0") == []
    two = parse_gpus("2:8G")
    assert [g.memory_bytes for g in two] == [8 * GIB] * 2
    # numbered as the worker's GPU slots are (GPU 0, GPU 1), across groups too
    assert [g.name for g in parse_gpus("2:8G,1")] == [
        f"GPU {i} (told by --gpus)" for i in range(3)]
    mixed = parse_gpus("1:24G:nvidia, 1")
    assert [g.memory_bytes for g in mixed] == [24 * GIB, None]
    assert "NVIDIA" in mixed[0].name and len({g.name for g in mixed}) == 2
    for bad in ("two", "2:8X", "1:8G:purple", "-1", "65"):
        with pytest.raises(InvalidInput, match="--gpus: cannot read"):
            parse_gpus(bad)


def caps(**kw: object) -> Capabilities:
    return Capabilities(**{"cpu_cores": 4, "ram_bytes": 8 * GIB, "kinds": ["sweep"], **kw})


def test_gpu_count_memory_and_vendor_are_met_together() -> None:
    two_small_one_big = caps(gpus=[Gpu(name="NVIDIA RTX 2060", memory_bytes=6 * GIB)] * 2
                             + [Gpu(name="AMD Radeon Pro", memory_bytes=16 * GIB)])
    need = Requirements.model_validate
    assert unmet(need(parse_requires("gpu=3")), two_small_one_big) == []
    assert unmet(need(parse_requires("gpu=2,vram>=8G")), two_small_one_big) == [
        "needs 2 GPUs with >= 8 GiB, has 3 GPUs with up to 16 GiB"]
    assert unmet(need(parse_requires("vram>=8G")), two_small_one_big) == []
    assert unmet(need(parse_requires("gpu=nvidia,vram>=8G")), two_small_one_big) != []
    assert unmet(need(parse_requires("gpu=amd,vram>=8G")), two_small_one_big) == []
    # unknown memory meets no memory term; an unknown vendor no vendor term
    assert unmet(need(parse_requires("vram>=1G")), caps(gpus=[Gpu(name="NVIDIA")])) != []
    assert unmet(need(parse_requires("gpu=intel")), caps(gpus=[Gpu(name="Mystery")])) != []
    assert unmet(need(parse_requires("cores>=8")), caps()) == ["not enough CPU cores"]
    optix = caps(render_devices=[RenderDevice(type="OPTIX", name="RTX")])
    assert unmet(need(parse_requires("device=optix")), optix) == []
    assert unmet(need(parse_requires("device=cuda")), optix) == ["no Cycles CUDA device"]


def test_waiting_reasons() -> None:
    six = OnlineWorker(caps(gpus=[Gpu(name="NVIDIA RTX 2060", memory_bytes=6 * GIB)]))
    need = Requirements.model_validate
    assert explain("sweep", need({}), []) == "waiting: no worker is online"
    assert explain("sweep", need(parse_requires("vram>=8G")), [six] * 3) == (
        "waiting: no online worker has a GPU with >= 8 GiB; 3 workers have GPUs with 6 GiB")
    assert explain("sweep", need(parse_requires("tag=studio-a")), [six]) == (
        "waiting: no online worker has tag studio-a; 1 worker has no tags")
    assert explain("sweep", need(parse_requires("blender>=4.2")), [six]) == (
        "waiting: no online worker has Blender >= 4.2; 1 worker has no Blender")
    assert explain("sweep", need({}), [six]) is None
    pending = OnlineWorker(six.caps, pending=True)
    assert explain("sweep", need({}), [pending]) == (
        "waiting: the only worker that fits waits for an admin's approval (pilot workers "
        "approve ID)")
    many = [OnlineWorker(caps(ram_bytes=n * GIB)) for n in (1, 2, 3, 4, 5)]
    assert explain("sweep", need(parse_requires("ram>=16G")), many) == (
        "waiting: no online worker has 16 GiB RAM; 1 worker has 1 GiB RAM, 1 worker has "
        "2 GiB RAM, 1 worker has 3 GiB RAM, 2 workers other")


def test_without_nvidia_smi_the_gpus_are_those_cycles_sees() -> None:
    from parallel_pilot.core.requirements import gpu_vendor
    from parallel_pilot.worker.capabilities import gpus_from_render_devices

    cuda = RenderDevice(type="CUDA", name="NVIDIA GeForce RTX 4090",
                        id="CUDA_NVIDIA GeForce RTX 4090_0000:01:00")
    optix = RenderDevice(type="OPTIX", name="NVIDIA GeForce RTX 4090",
                         id="CUDA_NVIDIA GeForce RTX 4090_0000:01:00_OptiX",
                         memory_bytes=24 * GIB)
    radeon = RenderDevice(type="HIP", name="AMD Radeon RX 7900 XTX", id="HIP_AMD_0000:03:00")
    cpu = RenderDevice(type="CPU", name="AMD EPYC", id="CPU")
    gpus = gpus_from_render_devices([cpu, cuda, optix, radeon])
    assert [(g.name, g.memory_bytes) for g in gpus] == [
        ("NVIDIA GeForce RTX 4090", 24 * GIB), ("AMD Radeon RX 7900 XTX", None)]
    assert [gpu_vendor(g) for g in gpus] == ["nvidia", "amd"]
    assert gpus_from_render_devices([cpu]) == []


def test_workers_alike_count_as_many() -> None:
    six = caps(gpus=[Gpu(name="NVIDIA RTX 2060", memory_bytes=6 * GIB)])
    need = Requirements.model_validate(parse_requires("vram>=8G,tag=a"))
    one_each = [OnlineWorker(six)] * 3 + [OnlineWorker(caps(tags=["a"]))]
    grouped = [OnlineWorker(six, count=3), OnlineWorker(caps(tags=["a"]))]
    assert explain("sweep", need, one_each) == explain("sweep", need, grouped) == (
        "waiting: no online worker has a GPU with >= 8 GiB; 3 workers have GPUs with 6 GiB, "
        "1 worker has no GPU")
