"""The client side: the ``Client`` SDK, the ``pilot`` CLI (``client.cli``), the config file
and ``LocalCluster`` (a coordinator and workers on this machine, behind ``pilot up``)."""

from parallel_pilot.client.sdk import Client

__all__ = ["Client"]
