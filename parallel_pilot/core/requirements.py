"""What a task needs of a worker (GPUs and their memory, RAM, CPU cores, Blender version,
tags, sandbox), the one text syntax users write it in (``--requires gpu,vram>=8G,tag=a``,
the same in the CLI, the SDK, the Executor and the dashboard), and the pure check the
scheduler's explanations apply to a worker's reported capabilities (``shortfalls`` /
``unmet``). The claim decides the same rule in SQL (``store.queries.matching``); a test
checks the two agree on random pairs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parallel_pilot.core.protocol import Capabilities, Gpu
from parallel_pilot.errors import InvalidInput

_VERSION = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")
MAX_GPU_COUNT = 64  # GPUs one task may ask for (a worker reports at most this many)
VERSION_PART_MAX = 999  # a version part above this compares as this (the SQL key's width)
GPU_VENDORS = ("nvidia", "amd", "intel", "apple")
CYCLES_DEVICES = ("CUDA", "OPTIX", "HIP", "ONEAPI", "METAL")
GIB = 1024 ** 3
MAX_TAG_CHARS = 200  # characters of one tag a requirement names (its SQL column)


class Requirements(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_blender: str | None = Field(
        default=None, max_length=40,
        description="the worker's Blender must be at least this version")
    min_ram_bytes: int | None = Field(default=None, ge=0)
    min_cpu_cores: int | None = Field(default=None, ge=0, le=100_000)
    gpu: bool = Field(default=False, description="at least one GPU (as gpu_count=1)")
    gpu_count: int = Field(default=0, ge=0, le=MAX_GPU_COUNT,
                           description="GPUs the worker must have (each meeting the rest)")
    min_vram_bytes: int | None = Field(
        default=None, ge=0, description="memory each of those GPUs must have")
    gpu_vendor: Literal["nvidia", "amd", "intel", "apple"] | None = Field(
        default=None, description="nvidia, amd, intel or apple (from the GPU's name)")
    tags: list[Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS)]] = Field(
        default_factory=list, max_length=20)
    sandbox: bool = Field(
        default=False, description="the worker must run commands in a sandbox (bwrap)")
    render_gpu: bool = Field(
        default=False, description="the worker's Blender must see a GPU Cycles renders on")
    cycles_device: Literal["CUDA", "OPTIX", "HIP", "ONEAPI", "METAL"] | None = Field(
        default=None, description="a Cycles device of this type: CUDA, OPTIX, HIP, ONEAPI, "
        "METAL")

    @property
    def gpus_needed(self) -> int:
        """GPUs asked for: ``gpu_count``, or one when any GPU term is given."""
        any_gpu = self.gpu or bool(self.min_vram_bytes) or self.gpu_vendor is not None
        return max(self.gpu_count, 1 if any_gpu else 0)

    @property
    def gpus_held(self) -> int:
        """GPUs a task holds while it runs (its GPU slots, ``gpus_held_by``)."""
        return gpus_held_by(self.gpus_needed, self.render_gpu, self.cycles_device)


def gpus_held_by(gpus_needed: int, render_gpu: bool, cycles_device: str | None) -> int:
    """GPUs a task with these terms holds on a worker while it runs: those it asks for,
    or one for a render on a Cycles GPU device (``device=gpu``, ``device=cuda``), which
    renders on the card it is given. The rest run on CPU slots and see no GPU."""
    return max(gpus_needed, 1 if render_gpu or cycles_device is not None else 0)


def version_tuple(text: str | None) -> tuple[int, int, int] | None:
    """``"5.0.1"`` -> (5, 0, 1); ``"Blender 4.2 LTS"`` -> (4, 2, 0); None if no version."""
    if not text:
        return None
    match = _VERSION.search(text)
    if not match:
        return None
    return tuple(int(g or 0) for g in match.groups())  # type: ignore[return-value]


def version_key(text: str | None) -> int | None:
    """A version as one integer that orders like it (what the SQL compares); parts above
    VERSION_PART_MAX count as it."""
    parts = version_tuple(text)
    if parts is None:
        return None
    width = VERSION_PART_MAX + 1
    a, b, c = (min(p, VERSION_PART_MAX) for p in parts)
    return (a * width + b) * width + c


def gpu_vendor(gpu: Gpu) -> str | None:
    """The vendor a GPU's name says (``NVIDIA GeForce RTX 4090`` -> nvidia)."""
    name = gpu.name.lower()
    for vendor, words in (("nvidia", ("nvidia", "geforce", "quadro", "tesla", "rtx")),
                          ("amd", ("amd", "radeon", "instinct")),
                          ("intel", ("intel", "arc ")), ("apple", ("apple",))):
        if any(w in name for w in words):
            return vendor
    return None


def gpus_meeting(requirements: Requirements, caps: Capabilities) -> int:
    """The worker's GPUs that meet the memory and vendor terms (unknown memory meets
    only no memory term)."""
    need = requirements.min_vram_bytes or 0
    return sum(1 for g in caps.gpus[:MAX_GPU_COUNT]
               if (g.memory_bytes or 0) >= need
               and (requirements.gpu_vendor is None or gpu_vendor(g) == requirements.gpu_vendor))


def size_text(n: int) -> str:
    """Bytes as users write them: ``8 GiB``, ``512 MiB``."""
    for unit, size in (("TiB", 1024 ** 4), ("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) or value >= 10 \
                else f"{value:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Shortfall:
    """One requirement a worker does not meet: ``term`` names it (what explanations group
    by), ``need`` is what the job asks (after "has"), ``have`` what the worker has."""

    term: str
    need: str
    have: str
    reason: str  # one worker's shortfall as a short sentence (``unmet``)


def shortfalls(requirements: Requirements, caps: Capabilities, *, trusted: bool = False,
               ) -> list[Shortfall]:
    """Why a worker cannot take a task, one entry per requirement it misses (empty when it
    can). ``caps`` are its claims; a sandbox is believed only of a worker an admin marked
    ``trusted``."""
    r, out = requirements, []
    if r.min_blender:
        have, need = version_key(caps.blender_version), version_key(r.min_blender)
        if have is None or (need is not None and have < need):
            out.append(Shortfall("blender", f"Blender >= {r.min_blender}",
                                 f"Blender {caps.blender_version}" if have is not None
                                 else "no Blender",
                                 f"Blender {caps.blender_version} < {r.min_blender}"
                                 if have is not None else "no Blender"))
    if r.min_ram_bytes and caps.ram_bytes < r.min_ram_bytes:
        out.append(Shortfall("ram", f"{size_text(r.min_ram_bytes)} RAM",
                             f"{size_text(caps.ram_bytes)} RAM", "not enough RAM"))
    if r.min_cpu_cores and caps.cpu_cores < r.min_cpu_cores:
        out.append(Shortfall("cores", f"{r.min_cpu_cores} CPU cores",
                             f"{caps.cpu_cores} cores", "not enough CPU cores"))
    wanted = r.gpus_needed
    if wanted and gpus_meeting(r, caps) < wanted:
        gpu_need, gpu_have = _gpu_need(r, wanted), _gpu_have(r, caps)
        out.append(Shortfall("gpu", gpu_need, gpu_have, "no GPU" if not caps.gpus
                             else f"needs {gpu_need}, has {gpu_have}"))
    if r.sandbox and not caps.sandbox:
        out.append(Shortfall("sandbox", "a sandbox", "none", "no sandbox"))
    elif r.sandbox and not trusted:
        out.append(Shortfall("sandbox", "a sandbox an admin trusts",
                             "a sandbox no admin marked trusted",
                             "sandbox claimed, but no admin marked the worker trusted"))
    if r.render_gpu and not any(d.type != "CPU" for d in caps.render_devices):
        out.append(Shortfall("cycles", "a GPU Cycles renders on", "none",
                             "no GPU for Cycles"))
    if r.cycles_device and not any(d.type == r.cycles_device for d in caps.render_devices):
        types = sorted({d.type for d in caps.render_devices})
        out.append(Shortfall("cycles", f"a Cycles {r.cycles_device} device",
                             ", ".join(types) if types else "no Cycles devices",
                             f"no Cycles {r.cycles_device} device"))
    missing = sorted(set(r.tags) - set(caps.tags))
    if missing:
        out.append(Shortfall("tags", "tag " + ", ".join(missing),
                             "tags " + ", ".join(sorted(caps.tags)) if caps.tags
                             else "no tags", f"missing tags {missing}"))
    return out


def _gpu_need(r: Requirements, wanted: int) -> str:
    what = f"{r.gpu_vendor.upper() if r.gpu_vendor != 'apple' else 'Apple'} " \
        if r.gpu_vendor else ""
    noun = f"a {what}GPU" if wanted == 1 else f"{wanted} {what}GPUs"
    return noun + (f" with >= {size_text(r.min_vram_bytes)}" if r.min_vram_bytes else "")


def _gpu_have(r: Requirements, caps: Capabilities) -> str:
    gpus = [g for g in caps.gpus[:MAX_GPU_COUNT]
            if r.gpu_vendor is None or gpu_vendor(g) == r.gpu_vendor]
    if not gpus:
        return "no GPU" if not caps.gpus else f"no {r.gpu_vendor} GPU"
    memories = [g.memory_bytes for g in gpus if g.memory_bytes]
    count = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}"
    if not r.min_vram_bytes:
        return count
    if not memories:
        return f"{count} of unknown memory"
    return f"a GPU with {size_text(max(memories))}" if len(gpus) == 1 \
        else f"{count} with up to {size_text(max(memories))}"


def unmet(requirements: Requirements, caps: Capabilities, *, trusted: bool = False,
          ) -> list[str]:
    """Why a worker cannot take a task, as sentences (empty when it can)."""
    return [s.reason for s in shortfalls(requirements, caps, trusted=trusted)]


def satisfies(requirements: dict | None, caps: Capabilities, *, trusted: bool = False) -> bool:
    if not requirements:
        return True
    return not unmet(Requirements.model_validate(requirements), caps, trusted=trusted)


# ---------------------------------------------------------------- the text syntax

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_TERM = re.compile(r"^([a-z_]+)\s*(>=|=)?\s*(.*)$", re.IGNORECASE)
ACCEPTED_TERMS = ("gpu", "gpu=N", "gpu=nvidia|amd|intel|apple", "vram>=SIZE",
                  "device=cuda|optix|hip|oneapi|metal|gpu", "ram>=SIZE", "cores>=N",
                  "blender>=VERSION", "tag=NAME", "sandbox")
SYNTAX_HELP = ("comma-separated terms: " + ", ".join(ACCEPTED_TERMS)
               + " (SIZE like 8G or 512M, binary units)")


class RequirementsSyntaxError(InvalidInput):
    """A ``--requires`` text that does not parse; the message names the bad term and
    lists the accepted ones."""


def parse_size(text: str) -> int:
    """``8G`` / ``8GiB`` / ``8GB`` -> 8 GiB in bytes; ``512M``; a bare number is bytes."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(text)
    factor = 1024 ** " kmgt".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * factor)


def parse_requires(text: str | None) -> dict[str, Any]:
    """``"gpu,vram>=8G,ram>=16G,cores>=4,tag=studio-a,blender>=4.2,sandbox"`` -> the fields
    of ``Requirements`` (only those given). Raises ``RequirementsSyntaxError``."""
    out: dict[str, Any] = {}
    tags: list[str] = []
    for raw in (text or "").split(","):
        term = raw.strip()
        if not term:
            continue
        try:
            _parse_term(term, out, tags)
        except (ValueError, KeyError):
            raise RequirementsSyntaxError(
                f"cannot read requirement {term!r}; accepted: {SYNTAX_HELP}") from None
    if tags:
        out["tags"] = sorted(set(tags))
    try:
        Requirements.model_validate(out)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RequirementsSyntaxError(
            f"requirements {text!r}: {first['msg']}; accepted: {SYNTAX_HELP}") from None
    return out


def _parse_term(term: str, out: dict[str, Any], tags: list[str]) -> None:
    match = _TERM.match(term)
    if not match:
        raise ValueError(term)
    name, op, value = match.group(1).lower(), match.group(2), match.group(3).strip()
    if op is None:
        if value or name not in ("gpu", "sandbox"):
            raise ValueError(term)
        out["gpu_count" if name == "gpu" else "sandbox"] = \
            max(out.get("gpu_count", 0), 1) if name == "gpu" else True
        return
    if not value:
        raise ValueError(term)
    if name in ("gpu", "gpus"):
        if value.isdigit() and op in ("=", ">="):
            out["gpu_count"] = int(value)
        elif value.lower() in GPU_VENDORS and op == "=":
            out["gpu_vendor"] = value.lower()
            out["gpu_count"] = max(out.get("gpu_count", 0), 1)
        else:
            raise ValueError(term)
    elif name == "tag" and op == "=":
        tags.append(value)
    elif name == "device" and op == "=":
        if value.lower() == "gpu":
            out["render_gpu"] = True
        elif value.upper() in CYCLES_DEVICES:
            out["cycles_device"] = value.upper()
        else:
            raise ValueError(term)
    elif op != ">=":
        raise ValueError(term)
    elif name == "vram":
        out["min_vram_bytes"] = parse_size(value)
        out["gpu_count"] = max(out.get("gpu_count", 0), 1)
    elif name == "ram":
        out["min_ram_bytes"] = parse_size(value)
    elif name in ("cores", "cpus"):
        out["min_cpu_cores"] = int(value)
    elif name == "blender":
        if version_tuple(value) is None:
            raise ValueError(term)
        out["min_blender"] = value
    else:
        raise KeyError(term)


def parse_gpus(text: str) -> list[Gpu]:
    """A worker's GPUs told by hand (``pilot worker --gpus``): comma-separated groups
    ``N[:MEM[:VENDOR]]``, e.g. ``2:8G`` (two GPUs of 8 GiB), ``1:24G:nvidia,1:8G``, ``0``
    (none, whatever ``nvidia-smi`` says). Raises ``InvalidInput`` naming the bad group."""
    gpus: list[Gpu] = []
    for raw in text.split(","):
        group = raw.strip()
        if not group:
            continue
        count, _, rest = group.partition(":")
        memory, _, vendor = rest.partition(":")
        try:
            n = int(count)
            size = parse_size(memory) if memory else None
        except ValueError:
            n = -1
        vendor = vendor.strip().lower()
        if not 0 <= n <= MAX_GPU_COUNT - len(gpus) or (vendor and vendor not in GPU_VENDORS):
            raise InvalidInput(
                f"--gpus: cannot read {group!r}; write N[:MEM[:VENDOR]] groups separated by "
                f"commas, e.g. 2:8G or 1:24G:nvidia,1:8G (at most {MAX_GPU_COUNT} GPUs; "
                f"vendors: {', '.join(GPU_VENDORS)})")
        label = f"{vendor.upper() if vendor != 'apple' else 'Apple'} GPU" if vendor else "GPU"
        first = len(gpus)  # the GPUs' numbers run on across groups: GPU 0, GPU 1, ...
        gpus.extend(Gpu(name=f"{label} {first + i} (told by --gpus)", memory_bytes=size)
                    for i in range(n))
    return gpus


def merge_requirements(*many: dict[str, Any] | None) -> dict[str, Any]:
    """Requirement dicts together: the later wins a field, except tags (all kept) and
    ``gpu_count`` (the most)."""
    out: dict[str, Any] = {}
    for one in many:
        for key, value in (one or {}).items():
            if key == "tags":
                out["tags"] = sorted(set(out.get("tags", [])) | set(value))
            elif key == "gpu_count":
                out[key] = max(out.get(key, 0), value)
            else:
                out[key] = value
    return out


RequirementsLike = str | Mapping[str, Any] | Requirements | None


def requirements_from(value: RequirementsLike) -> dict[str, Any]:
    """What a caller may pass as requirements, as fields: the ``--requires`` text
    (``"gpu,vram>=8G"``), a ``Requirements``, or a dict of its fields (checked by the
    coordinator)."""
    if value is None:
        return {}
    if isinstance(value, str):
        return parse_requires(value)
    if isinstance(value, Requirements):
        return value.model_dump(exclude_defaults=True)
    return dict(value)
