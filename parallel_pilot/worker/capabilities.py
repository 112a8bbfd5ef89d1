"""What this machine offers, as reported when the worker registers: CPU cores, RAM, GPUs
(through ``nvidia-smi``), the Blender version (a ``blender`` on PATH, or the ``bpy``
package), the kinds its owner allows, tags, platform and versions. Every probe is bounded
in time and a missing tool simply means "none"."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess

import psutil

import parallel_pilot
from parallel_pilot.core.protocol import Capabilities, Gpu
from parallel_pilot.core.settings import WorkerSettings

NVIDIA_SMI_TIMEOUT = 10.0  # seconds nvidia-smi may take to list the GPUs
BLENDER_VERSION_TIMEOUT = 20.0  # seconds `blender --version` may take
MIB = 1024 * 1024  # nvidia-smi reports memory in MiB

_BLENDER_LINE = re.compile(r"^Blender\s+(\d+(?:\.\d+)+\S*)")

log = logging.getLogger(__name__)


def detect_capabilities(settings: WorkerSettings) -> Capabilities:
    return Capabilities(
        cpu_cores=os.cpu_count() or 1,
        ram_bytes=psutil.virtual_memory().total,
        gpus=detect_gpus(),
        blender_version=detect_blender(),
        kinds=list(settings.allow),
        tags=list(settings.tags),
        platform=platform.platform(),
        python=platform.python_version(),
        pilot_version=parallel_pilot.__version__,
        slots=settings.slots,
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
    """The Blender version: from ``blender --version`` if on PATH, else the ``bpy``
    package's version (found without importing it), else None."""
    exe = shutil.which("blender")
    if exe is not None:
        try:
            proc = subprocess.run(
                [exe, "--version"], capture_output=True, text=True,
                timeout=BLENDER_VERSION_TIMEOUT, stdin=subprocess.DEVNULL, check=False,
            )
            first = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
            if proc.returncode == 0 and first:
                return parse_blender_version(first)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("blender --version failed: %s", exc)
    try:
        if importlib.util.find_spec("bpy") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version("bpy")
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_blender_version(first_line: str) -> str:
    """``Blender 4.2.3 LTS`` -> ``4.2.3``; any other first line is kept as it is."""
    match = _BLENDER_LINE.match(first_line.strip())
    return match.group(1) if match else first_line.strip()[:100]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
