"""What a task's child process sees of the worker's GPUs: exactly the ones its attempt
was given (``RunContext.gpus``), through the variables the GPU runtimes read.

- ``CUDA_VISIBLE_DEVICES`` (CUDA, and so Cycles' CUDA and OptiX backends, PyTorch, ...)
  and ``HIP_VISIBLE_DEVICES`` (AMD's HIP, Cycles' HIP backend) name the given GPUs;
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA number them as ``nvidia-smi`` does (its
  default, fastest first, would not).
- A task given no GPU (a CPU task) gets both set empty: it sees no GPU, so it cannot
  take memory or time on a card a GPU task of this worker holds.
- The indices are the worker's own (0..N-1); when the worker itself was started with one
  of these variables (an admin confining it to some cards), index i means the i-th card
  of that list.
- ``gpus`` None (a context that assigns no GPUs, outside a worker) leaves the
  environment as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

VISIBILITY_VARIABLES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
DEVICE_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # CUDA's numbering = nvidia-smi's


def gpu_env(gpus: Sequence[int] | None, base: Mapping[str, str]) -> dict[str, str]:
    """The variables to set on top of ``base`` (the worker's environment) for a child
    that may use ``gpus`` (see the module docstring)."""
    if gpus is None:
        return {}
    out = dict(DEVICE_ORDER)
    for name in VISIBILITY_VARIABLES:
        inherited = [p.strip() for p in base.get(name, "").split(",") if p.strip()]
        if inherited:
            names = [inherited[g] for g in gpus if g < len(inherited)]
        else:
            names = [str(g) for g in gpus]
        out[name] = ",".join(names)
    return out


def with_gpus(env: Mapping[str, str], gpus: Sequence[int] | None) -> dict[str, str]:
    """``env`` with the GPU variables for ``gpus`` set (``gpu_env``)."""
    return {**env, **gpu_env(gpus, env)}
