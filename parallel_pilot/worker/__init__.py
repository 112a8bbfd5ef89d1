"""The worker agent: registers with a coordinator, leases tasks, runs them with their kind,
streams heartbeats and logs, uploads outputs and reports results (see ``agent``)."""

from parallel_pilot.worker.agent import Worker, run_worker
from parallel_pilot.worker.cache import BlobCache
from parallel_pilot.worker.capabilities import detect_capabilities
from parallel_pilot.worker.context import StopReason, TaskContext

__all__ = ["BlobCache", "StopReason", "TaskContext", "Worker", "detect_capabilities",
           "run_worker"]
