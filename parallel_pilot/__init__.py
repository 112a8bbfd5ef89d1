"""Parallel Pilot: share compute. A coordinator cuts jobs into tasks that workers pull."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Client", "Executor", "__version__"]

if TYPE_CHECKING:
    from parallel_pilot.client.executor import Executor
    from parallel_pilot.client.sdk import Client


def __getattr__(name: str) -> Any:
    # imported on first use, so `import parallel_pilot` stays light for the worker
    if name == "Client":
        from parallel_pilot.client.sdk import Client

        return Client
    if name == "Executor":
        from parallel_pilot.client.executor import Executor

        return Executor
    raise AttributeError(f"module 'parallel_pilot' has no attribute {name!r}")
