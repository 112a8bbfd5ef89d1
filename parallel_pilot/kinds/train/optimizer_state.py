"""An AdamW ``state_dict`` as a safetensors file (never a pickle): tensors named
``state.<param index>.<key>``, the param groups as JSON metadata. A worker keeps one per
(job, shard) so the inner optimiser resumes when it gets the same shard again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

GROUPS_KEY = "param_groups"


def save_optimizer(path: Path, state_dict: dict[str, Any]) -> int:
    """Write an optimizer ``state_dict`` to ``path``; returns the bytes written."""
    tensors: dict[str, torch.Tensor] = {}
    for index, entries in state_dict.get("state", {}).items():
        for key, value in entries.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{int(index)}.{key}"] = tensor.detach().to("cpu").contiguous()
    groups = json.dumps(state_dict.get("param_groups", []))
    save_file(tensors, str(path), metadata={GROUPS_KEY: groups})
    return Path(path).stat().st_size


def load_optimizer(path: Path) -> dict[str, Any]:
    """Read what ``save_optimizer`` wrote back into a ``state_dict``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        groups = json.loads((handle.metadata() or {}).get(GROUPS_KEY, "[]"))
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = handle.get_tensor(name)
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}
