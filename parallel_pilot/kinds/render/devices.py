"""Which device a render task renders on: the Cycles devices this worker's Blender sees
(detected once per process by running ``devices_probe.py`` in a Blender child), their
memory (from the GPUs ``nvidia-smi`` listed, matched by name), and the pure choice of a
job's wish (``cpu``, ``gpu``, ``any``) among them.

``choose_device`` returns what ``script.py``'s ``setup_device`` sets up: ``{"type": "CPU"}``,
or ``{"type": BACKEND, "ids": [...]}`` with the ids of that backend's devices. Cycles uses
one backend at a time, and the same card has a different id under each (OptiX lists every
CUDA card again, as ``..._OptiX``), so the ids always come from the chosen backend's own
entries.

On a worker that gives its GPUs to attempts (``RunContext.gpus``), a render renders only
on the GPUs its attempt was given (``restrict_to_gpus``): the child's environment shows
it only those cards (``kinds.gpu_env``: CUDA and OptiX, HIP), and the ids are narrowed
to them too. GPU i of the worker is the i-th device of the backend's card list as the
probe saw it with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (the order of ``nvidia-smi``); for
OptiX, the OptiX entry of that CUDA card (its id with ``_OptiX``). Where the list has
fewer cards than that (GPUs told by hand) the environment alone narrows it, and
``script.py`` then uses every card of the backend the child sees. A render given no GPU
(a CPU task) renders on the CPU.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from parallel_pilot.core.protocol import Gpu, RenderDevice
from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.gpu_env import DEVICE_ORDER
from parallel_pilot.kinds.process import run_process
from parallel_pilot.kinds.render.blender import (
    BlenderFailed,
    BlenderInstall,
    child_env,
    installed_blender,
)

PROBE_SCRIPT = Path(__file__).with_name("devices_probe.py")
PROBE_TAG = "PILOT_RENDER_DEVICES"  # the line devices_probe.py prints
PROBE_TIMEOUT_SECONDS = 60.0  # how long Blender may take to start and list its devices
MAX_RENDER_DEVICES = 64  # devices reported (Capabilities.render_devices holds at most 64)
# GPU backends, best first: OptiX uses the RT cores of the cards CUDA also drives
BACKEND_PREFERENCE = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")
NVIDIA_BACKENDS = frozenset({"CUDA", "OPTIX"})  # the cards nvidia-smi lists
# backends whose cards a child's environment narrows (kinds.gpu_env)
ENV_NARROWED_BACKENDS = frozenset({"CUDA", "OPTIX", "HIP"})
WISHES = ("cpu", "gpu", "any")
CPU_DEVICE: dict[str, Any] = {"type": "CPU"}

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- choice


def choose_device(wish: str, devices: Sequence[RenderDevice]) -> dict[str, Any]:
    """The device a task with ``wish`` renders on, among ``devices`` (pure).

    ``cpu`` -> the CPU, even on a GPU worker. ``any`` and ``gpu`` -> the best GPU backend
    present with all its devices; with none, ``any`` renders on the CPU and ``gpu`` raises
    ``BlenderFailed`` (retryable: the scheduler should not have leased it here)."""
    if wish not in WISHES:
        raise InvalidInput(f"unknown render device {wish!r}: choose one of {', '.join(WISHES)}")
    if wish == "cpu":
        return dict(CPU_DEVICE)
    backend = best_backend(devices)
    if backend is None:
        if wish == "any":
            return dict(CPU_DEVICE)
        seen = ", ".join(f"{d.type} {d.name}" for d in devices) or "no device at all"
        raise BlenderFailed(
            "the task asked for a GPU (device gpu) but this worker's Blender sees no GPU "
            f"Cycles can render on (it sees {seen}); a worker that reports one should "
            "take it: check the GPU driver here, or submit with device any")
    return {"type": backend, "ids": [d.id for d in devices if d.type == backend]}


def restrict_to_gpus(device: dict[str, Any], devices: Sequence[RenderDevice],
                     gpus: Sequence[int]) -> dict[str, Any]:
    """``device`` (``choose_device``'s GPU choice) narrowed to the worker's GPUs ``gpus``
    (the module docstring says the rule). ``env_narrowed``: the child sees only its cards,
    so ``script.py`` may use every card of the backend it sees when no id matches."""
    backend = device["type"]
    narrowed = backend in ENV_NARROWED_BACKENDS
    cards = [d for d in devices if d.type == ("CUDA" if backend == "OPTIX" else backend)]
    out = {**device, "env_narrowed": narrowed}
    if not gpus or any(g >= len(cards) for g in gpus):
        return out
    ids = [cards[g].id for g in gpus]
    if backend == "OPTIX":  # OptiX lists the CUDA cards again, each id with _OptiX
        optix = {d.id for d in devices if d.type == "OPTIX"}
        ids = [f"{i}_OptiX" for i in ids if f"{i}_OptiX" in optix]
    return {**out, "ids": ids} if ids else out


def best_backend(devices: Iterable[RenderDevice]) -> str | None:
    """The first of ``BACKEND_PREFERENCE`` that has a device, or None."""
    present = {d.type for d in devices}
    return next((b for b in BACKEND_PREFERENCE if b in present), None)


def describe_choice(device: dict[str, Any], devices: Sequence[RenderDevice]) -> str:
    """``OPTIX: NVIDIA H200, NVIDIA H200`` or ``CPU``, for the task's log."""
    if device.get("type") == "CPU":
        return "CPU"
    ids = set(device.get("ids") or [])
    names = [d.name for d in devices if d.type == device.get("type") and d.id in ids]
    return f"{device.get('type')}: {', '.join(names)}"


def render_device(wish: str, gpus: Sequence[int] | None = None) -> dict[str, Any]:
    """What ``script.py`` sets up for a task of this worker with ``wish``, on the GPUs
    ``gpus`` the attempt was given (() none: the CPU; None: every GPU, outside a worker
    that gives GPUs) (``chunk.py`` calls it; the detection behind it runs once per
    process)."""
    if wish == "cpu":  # no need to start Blender to know this
        return dict(CPU_DEVICE)
    if gpus is not None and not gpus:
        if wish == "gpu":
            raise BlenderFailed("the task asked for a GPU (device gpu) but this worker gave "
                                "its attempt none")
        return dict(CPU_DEVICE)  # a CPU task: its child sees no GPU
    install = installed_blender()
    devices = probe_devices(install) if install is not None else ()
    device = choose_device(wish, devices)
    if gpus is not None and device.get("type") != "CPU":
        device = restrict_to_gpus(device, devices, gpus)
    log.info("device %s renders on %s", wish, describe_choice(device, devices))
    return device


# ---------------------------------------------------------------- detection


def detect_render_devices(install: BlenderInstall,
                          gpus: Sequence[Gpu] = ()) -> list[RenderDevice]:
    """The Cycles devices ``install`` sees (the probe runs once per process and install),
    with the memory of the NVIDIA ones taken from ``gpus`` (``worker.capabilities.
    detect_gpus()``). Any failure of the probe means no device, and a log line."""
    return with_memory(probe_devices(install), gpus)


def detect_render_devices_for_worker(gpus: Sequence[Gpu] = ()) -> list[RenderDevice]:
    """``detect_render_devices`` for the Blender this worker renders with; [] without one."""
    install = installed_blender()
    if install is None:
        return []
    return detect_render_devices(install, gpus)


@functools.lru_cache(maxsize=4)
def probe_devices(install: BlenderInstall) -> tuple[RenderDevice, ...]:
    """Run ``devices_probe.py`` in a Blender child and read its line; () on any failure."""
    lines: list[str] = []

    def on_stdout(line: str) -> None:
        if line.startswith(PROBE_TAG + " "):
            lines.append(line)

    with tempfile.TemporaryDirectory(prefix="pilot-devices-") as tmp:
        job_file = Path(tmp) / "probe.json"  # Blender scripts are started with a job file
        job_file.write_text("{}")
        proc = run_process(install.command(PROBE_SCRIPT, job_file), cwd=Path(tmp),
                           env={**child_env(Path(tmp)), **DEVICE_ORDER},
                           stop_event=threading.Event(),
                           timeout_seconds=PROBE_TIMEOUT_SECONDS, on_stdout=on_stdout)
    if not lines:
        why = (f"took more than {PROBE_TIMEOUT_SECONDS:.0f} s" if proc.timed_out else
               f"exited with code {proc.exit_code}: {proc.stderr.strip()[-500:]}")
        log.warning("listing the Cycles devices of %s failed (%s); reporting none",
                    install.describe(), why)
        return ()
    devices, errors = parse_probe(lines[-1].partition(" ")[2])
    if errors:
        log.info("Cycles backends without devices in %s: %s", install.describe(),
                 "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
    return tuple(devices)


def parse_probe(text: str) -> tuple[list[RenderDevice], dict[str, str]]:
    """The probe's JSON -> (devices, errors per backend); entries that are not devices are
    dropped, and at most ``MAX_RENDER_DEVICES`` are kept (GPUs before the CPU)."""
    try:
        found = json.loads(text)
    except ValueError:
        log.warning("unreadable Cycles device list: %.200s", text)
        return [], {}
    if not isinstance(found, dict):
        return [], {}
    devices = []
    for entry in found.get("devices") or []:
        try:
            devices.append(RenderDevice.model_validate(
                {"type": entry["type"], "name": entry["name"], "id": entry.get("id", "")}))
        except (ValidationError, KeyError, TypeError, AttributeError):
            log.warning("ignoring Cycles device %.200r", entry)
    errors = found.get("errors")
    return devices[:MAX_RENDER_DEVICES], errors if isinstance(errors, dict) else {}


def with_memory(devices: Iterable[RenderDevice], gpus: Sequence[Gpu]) -> list[RenderDevice]:
    """``devices`` with the memory of each CUDA/OptiX one set from the ``nvidia-smi`` GPU of
    the same name (case and spacing aside; or one name containing the other, as drivers
    and Blender sometimes disagree on a prefix). Other devices keep what they have."""
    by_name: dict[str, int] = {_name_key(g.name): g.memory_bytes for g in gpus
                               if g.memory_bytes is not None}
    merged = []
    for device in devices:
        memory = device.memory_bytes
        if device.type in NVIDIA_BACKENDS and memory is None:
            memory = _memory_for(_name_key(device.name), by_name)
        merged.append(device.model_copy(update={"memory_bytes": memory}))
    return merged


def _memory_for(key: str, by_name: dict[str, int]) -> int | None:
    if key in by_name:
        return by_name[key]
    near = [m for name, m in by_name.items() if name and key and (name in key or key in name)]
    return near[0] if len(set(near)) == 1 else None  # unsure between two cards: unknown


def _name_key(name: str) -> str:
    return " ".join(name.lower().split())
