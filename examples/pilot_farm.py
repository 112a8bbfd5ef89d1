"""Shared by the examples: a ``Client`` for the farm named by ``PILOT_SERVER``/``PILOT_TOKEN``
(or ``pilot login``), or, with ``--local N``, for a coordinator and N workers started here
(all kinds allowed, so ``python`` and ``sweep`` run) and stopped afterwards."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from parallel_pilot import Client
from parallel_pilot.client.local_cluster import LocalCluster

LOCAL_KINDS = ("python", "sweep")  # what the examples' local workers run


def add_farm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", type=int, metavar="N", default=0,
                        help="start a coordinator and N workers on this machine for the run")


@contextlib.contextmanager
def farm_client(args: argparse.Namespace) -> Iterator[Client]:
    """A client of the farm the arguments name."""
    if not args.local:
        with Client() as client:
            yield client
        return
    with tempfile.TemporaryDirectory(prefix="pilot-example-") as tmp, \
            LocalCluster(Path(tmp), workers=args.local, allow=LOCAL_KINDS) as cluster, \
            cluster.client() as client:
        yield client
