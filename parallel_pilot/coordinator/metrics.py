"""``/metrics`` in the Prometheus text format (``prometheus_client``), one registry per
coordinator process (no module-global registry):

- read from the database at each scrape, so every coordinator of a farm reports the same:
  ``pilot_tasks{state}`` (the queue depth per state; ``leased`` is the leases held),
  ``pilot_jobs{state}``, ``pilot_workers{state}`` (as ``pilot workers`` shows them);
- counted by this process since it started (sum them over a farm's coordinators):
  ``pilot_http_request_duration_seconds{method,route,status}`` (the route's template,
  ``/api/v1/jobs/{job_id}``, never the path a caller typed; observed by
  ``log_context.RequestLog``, the one middleware that watches every request) and
  ``pilot_task_duration_seconds{kind,outcome}`` (lease to report, for the attempts whose
  report this process took).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Scope

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 120.0)  # long polls wait up to a minute or two
TASK_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0,
                24 * 3600.0)
UNMATCHED = "unmatched"  # the route label of a request no route took (a 404)


class Metrics:
    """This process's metrics; ``watch`` adds the farm's counts, read at each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = Histogram("pilot_http_request_duration_seconds",
                              "Seconds from a request's start to its answer's end",
                              ["method", "route", "status"], buckets=HTTP_BUCKETS,
                              registry=self.registry)
        self.tasks = Histogram("pilot_task_duration_seconds",
                               "Seconds from an attempt's lease to its report",
                               ["kind", "outcome"], buckets=TASK_BUCKETS,
                               registry=self.registry)

    def watch(self, counts: Callable[[], FarmCounts]) -> None:
        self.registry.register(_FarmCollector(counts))

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http.labels(method, route, str(status)).observe(seconds)

    def tasks_finished(self, finished: Iterable[tuple[str, str, float]]) -> None:
        """(kind, outcome, seconds) of attempts reported."""
        for kind, outcome, seconds in finished:
            self.tasks.labels(kind, outcome).observe(max(0.0, seconds))

    def text(self) -> bytes:
        return generate_latest(self.registry)


FarmCounts = dict[str, dict[str, int]]  # "tasks"/"jobs"/"workers" -> state -> count

_GAUGES = {"tasks": "Tasks per state, over every job (leased: the leases held)",
           "jobs": "Jobs per state", "workers": "Workers per state, as pilot workers shows"}


class _FarmCollector(Collector):
    def __init__(self, counts: Callable[[], FarmCounts]) -> None:
        self.counts = counts

    def describe(self) -> Iterable[Metric]:
        return []  # read only at a scrape, never at registration

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        for what, help_text in _GAUGES.items():
            gauge = GaugeMetricFamily(f"pilot_{what}", help_text, labels=["state"])
            for state, n in sorted(counts.get(what, {}).items()):
                gauge.add_metric([state], n)
            yield gauge


def route_template(scope: Scope) -> str:
    """The template of the route that took the request, with the prefix it was included
    under (``/api/v1`` + ``/jobs/{job_id}``): that prefix is the part of the path before
    where the route's own pattern matches."""
    route = scope.get("route")
    template, pattern = getattr(route, "path", None), getattr(route, "path_regex", None)
    if not template or pattern is None:
        return UNMATCHED
    path = str(scope.get("path", ""))
    for at in [i for i, ch in enumerate(path) if ch == "/"]:
        if pattern.match(path[at:]):
            return path[:at] + str(template)
    return str(template)
