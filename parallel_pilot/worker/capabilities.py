"""What this machine offers, as reported when the worker registers: CPU cores, RAM, GPUs
(through ``nvidia-smi``, or as its owner told them: ``--gpus``), the Cycles devices
Blender sees, the Blender version (a ``blender`` on PATH, or the ``bpy`` package), the
kinds its owner allows, tags, platform and versions. Every probe is bounded in time and
a missing tool simply means "none"."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess

import psutil

import parallel_pilot
from parallel_pilot.core.protocol import Capabilities, Gpu, RenderDevice
from parallel_pilot.core.requirements import parse_gpus
from parallel_pilot.core.settings import WorkerSettings
from parallel_pilot.kinds.render.blender import installed_blender
from parallel_pilot.kinds.render.devices import detect_render_devices_for_worker

NVIDIA_SMI_TIMEOUT = 10.0  # seconds nvidia-smi may take to list the GPUs
MIB = 1024 * 1024  # nvidia-smi reports memory in MiB


log = logging.getLogger(__name__)


def detect_capabilities(settings: WorkerSettings, *,
                        render_sandbox: bool = False) -> Capabilities:
    """What this worker offers; ``render_sandbox``: whether Blender runs in bwrap here
    (decided by the agent's probe at start, ``kinds.render.sandbox``). The Cycles devices
    are asked of Blender only where the owner allows renders."""
    gpus = parse_gpus(settings.gpus) if settings.gpus is not None else detect_gpus()
    devices = detect_render_devices_for_worker(gpus) if "render" in settings.allow else []
    if settings.gpus is None and not gpus:  # no nvidia-smi: the GPUs Cycles sees, if any
        gpus = gpus_from_render_devices(devices)
    return Capabilities(
        cpu_cores=os.cpu_count() or 1,
        ram_bytes=psutil.virtual_memory().total,
        gpus=gpus,
        blender_version=detect_blender(),
        kinds=list(settings.allow),
        tags=list(settings.tags),
        platform=platform.platform(),
        python=platform.python_version(),
        pilot_version=parallel_pilot.__version__,
        slots=settings.slots,
        sandbox=settings.sandbox,
        render_sandbox=render_sandbox,
        render_devices=devices,
    )


def detect_gpus() -> list[Gpu]:
    """NVIDIA GPUs with their memory; none when ``nvidia-smi`` is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT,
            stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi failed: %s", exc)
        return []
    if proc.returncode != 0:
        return []
    return parse_nvidia_smi(proc.stdout)


def gpus_from_render_devices(devices: list[RenderDevice]) -> list[Gpu]:
    """One GPU per distinct non-CPU Cycles device (CUDA and OptiX list the same card
    twice: one entry per device id, else name), with its memory where Blender gave it."""
    seen: dict[str, Gpu] = {}
    for device in devices:
        if device.type == "CPU":
            continue
        key = device.id.split("_OptiX")[0] if device.id else device.name
        known = seen.get(key)
        if known is None or (known.memory_bytes is None and device.memory_bytes):
            seen[key] = Gpu(name=device.name[:200], memory_bytes=device.memory_bytes)
    return list(seen.values())


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Lines of ``name, memory MiB`` (memory may be ``[N/A]``)."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, memory = line.rpartition(",")
        if not name:
            name, memory = memory, ""
        memory = memory.strip()
        gpus.append(Gpu(name=name.strip()[:200],
                        memory_bytes=int(float(memory) * MIB) if _is_number(memory) else None))
    return gpus


def detect_blender() -> str | None:
    """The version of the Blender this worker renders with (the same one the render kind
    finds: ``--blender PATH``, else the ``bpy`` package, else ``blender`` on PATH)."""
    install = installed_blender()
    return install.version if install is not None else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
