"""The relay's metrics, kept and written by Prometheus's own client (``prometheus-client``, used
only here): counters typed as counters, gauges as gauges, latencies as histograms.

- ``relay_{name}_total`` counters, each declared in ``COUNTERS`` with what it counts;
- ``relay_request_seconds{route, outcome}``: every request but the ops routes, by route family
  (``route_family``) and by where its data came from (``OUTCOMES``: the slowest place any of
  its cuboids came from, ``none`` for routes without data, ``error`` for a 4xx/5xx answer);
- ``relay_upstream_seconds{source}``: each upstream read, by source (collection/experiment/
  channel patterns of the config entry);
- the live state, read when scraped (``Metrics.live``): connections, bytes in flight, each cache
  tier's size (gauges) and its hits, errors and evictions (counters).

With ``--workers N`` the workers keep their counters and histograms in files of one directory
(the client's multiprocess mode: ``relay serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh
directory before the workers start), so any worker's ``/metrics`` is the sum over all of them;
the live state is the answering worker's own, labelled ``worker`` with its process id.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "COUNTERS", "OUTCOMES", "LiveValue", "Metrics", "Outcome",
           "route_family"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# no ``*_created`` series beside every counter and histogram: a scrape's size halves, and
# Prometheus does not need them
disable_created_metrics()  # type: ignore[no-untyped-call]

#: every counter the relay keeps, with what it counts
COUNTERS: dict[str, str] = {
    "requests_total": "Requests that reached the routes (ops routes excepted)",
    "requests_refused_total": "Requests refused with 503: server.max_concurrency in progress",
    "requests_abandoned_total": "Requests whose client went away before the answer",
    "connections_refused_total": "Connections refused: server.max_connections open",
    "header_timeouts_total": "Connections closed: no complete request head in time",
    "send_timeouts_total": "Connections closed: the client read nothing in time",
    "inflight_refused_total": "Requests refused: the in-flight memory budget stayed full",
    "loops_refused_total": "Requests refused with 508: this relay was already on their path",
    "upstream_reads_total": "Cuboids read from an upstream store",
    "upstream_errors_total": "Upstream reads that failed",
    "decoded_hits_total": "Cuboids found held decoded in memory",
    "stored_frame_hits_total": "One-cuboid answers sent as the stored Blosc frame",
    "forwarded_total": "One-cuboid answers forwarded from an upstream relay as they arrived",
    "forwards_cut_total": "Forwarded answers cut off: the frame failed its check",
    "cache_bad_entries_total": "Cached values that did not hold what their key promised",
    "stale_served_total": "Cuboids served stale because the upstream read failed",
    "fleet_supplied_total": "Cuboids another relay of the fleet read while this one waited",
    "derived_cuboids_total": "Cuboids of derived pyramid levels made",
    "writes_total": "Cutouts written to a store (POST answered 201)",
    "write_errors_total": "Cutout writes the store (or the fleet's shared tier) refused or failed",
    "write_invalidated_total": "Cached cuboids dropped because a write touched them",
    "write_raced_reads_total": "Cuboids read while a write of them was under way in the "
                               "fleet: answered, not cached",
    "versions_unknown_total": "Reads of a writable source in a fleet whose Redis could not "
                              "say which cached copies are current (read afresh)",
    "mesh_manifests_total": "Mesh manifests made from the label index",
    "mesh_fragments_made_total": "Mesh fragments made with zmesh",
    "label_index_cells_made_total": "Label index entries made from a cell's voxels "
                                    "(relay.labels)",
    "mesh_files_passed_total": "Files of a store's own mesh directory passed through",
}

#: where a request's data came from, fastest first; a request reports its slowest cuboid's
Outcome = Literal["none", "memory", "disk", "shared", "derived", "upstream", "stale", "error"]
OUTCOMES: tuple[Outcome, ...] = ("none", "memory", "disk", "shared", "derived", "upstream",
                                 "stale", "error")

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0)


def route_family(path: str) -> str:
    """A request path's route, as a label of few values (never the path itself)."""
    parts = path.split("/", 3)
    head = parts[1] if len(parts) > 1 else ""
    if head in ("v1", "latest"):
        kind = parts[2] if len(parts) > 2 else ""
        if kind in ("cutout", "mesh", "downsample", "coord", "collection"):
            return f"boss_{kind}"
        return "boss_other"
    if head == "precomputed":
        tail = path.rsplit("/", 2)
        if tail[-1] == "info" and tail[-2] != "mesh":
            return "precomputed_info"
        return "precomputed_mesh" if "/mesh/" in path else "precomputed_chunk"
    return "other"


#: what the live state reader yields: (name, "counter" or "gauge", help, value)
LiveValue = tuple[str, Literal["counter", "gauge"], str, float]


class _Live(Collector):
    def __init__(self, read: Callable[[], Iterable[LiveValue]], worker: str | None) -> None:
        self.read = read
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        labels = ["worker"] if self.worker else []
        for name, kind, text, value in self.read():
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(f"relay_{name}", text, labels=labels)
            else:
                family = GaugeMetricFamily(f"relay_{name}", text, labels=labels)
            family.add_metric([self.worker] if self.worker else [], value)
            yield family


class _CounterView(Mapping[str, float]):
    def __init__(self, counters: dict[str, Counter]) -> None:
        self._counters = counters

    def __getitem__(self, name: str) -> float:
        # the one counter's own sample (collecting the registry would read every histogram)
        family = next(iter(self._counters[name].collect()))
        return next(s.value for s in family.samples if s.name.endswith("_total"))

    def __iter__(self) -> Iterator[str]:
        return iter(COUNTERS)

    def __len__(self) -> int:
        return len(COUNTERS)


class Metrics:
    """One app's metrics. ``inc`` the counters, ``observe_*`` the latencies, ``render`` the
    Prometheus text (``CONTENT_TYPE``)."""

    def __init__(self) -> None:
        # a registry per app: tests run many apps in one process
        self.registry = CollectorRegistry()
        self._counters = {name: Counter(f"relay_{name}", text, registry=self.registry)
                          for name, text in COUNTERS.items()}
        self._requests = Histogram("relay_request_seconds", "Time to answer a request, by "
                                   "route and by where its data came from",
                                   ["route", "outcome"], buckets=_LATENCY,
                                   registry=self.registry)
        self._upstream = Histogram("relay_upstream_seconds", "Time of one upstream read, by "
                                   "source", ["source"], buckets=_LATENCY,
                                   registry=self.registry)
        self._live: _Live | None = None

    def inc(self, name: str, amount: int = 1) -> None:
        self._counters[name].inc(amount)

    def observe_request(self, route: str, outcome: Outcome, seconds: float) -> None:
        self._requests.labels(route, outcome).observe(seconds)

    def observe_upstream(self, source: str, seconds: float) -> None:
        self._upstream.labels(source).observe(seconds)

    @property
    def counters(self) -> Mapping[str, float]:
        """This process's counters by name (``requests_total``…), for /stats and tests: a
        live view, read as it is looked at."""
        return _CounterView(self._counters)

    def live(self, read: Callable[[], Iterable[LiveValue]]) -> None:
        """Have ``read`` report the live state at every scrape."""
        multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._live = _Live(read, str(os.getpid()) if multiprocess else None)

    def render(self) -> bytes:
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # every worker's counters and histograms, summed from their files
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
        if self._live is not None:
            live = CollectorRegistry()
            live.register(self._live)
            text += generate_latest(live)
        return text
