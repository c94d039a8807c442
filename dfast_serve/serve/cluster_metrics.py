"""Metric families recorded twice: in the router replica's own registry and through Ray's metrics API.

The router replica's ``prometheus_client`` registry backs ``GET /metrics`` (that one replica's
view). Each value is also recorded with ``ray.serve.metrics``: every Ray worker reports to its
node's metrics agent, which exports all of them in Prometheus text on the node's metrics export
port (``ray start --metrics-export-port``; cluster.yaml uses 8080). Scraping every node therefore
sees every router replica, however many there are; ``sum by (model_name)`` over the series adds
them up (each router replica is its own series, tagged ``application``, ``deployment``,
``replica`` and Ray's ``WorkerId``).

Names: Ray 2.60 warns that ``:`` in a metric name will become an error and prefixes ``ray_`` on
export, so ``dfast:time_to_first_token_seconds`` of ``/metrics`` is scraped from the metrics
agent as ``ray_dfast_time_to_first_token_seconds``. Ray exports a histogram's ``_sum`` from
bucket midpoints (an estimate); counts and buckets are exact.
"""

from __future__ import annotations

from typing import Sequence

import prometheus_client
from ray.serve import metrics as ray_metrics

LOCAL_PREFIX = "dfast:"
RAY_PREFIX = "dfast_"


class Family:
    """A labelled family with ``prometheus_client``'s ``labels(...)`` interface, feeding both sinks."""

    def __init__(self, local: prometheus_client.metrics.MetricWrapperBase, remote: ray_metrics.metrics.Metric,
                 labelnames: Sequence[str]) -> None:
        self.local, self.remote, self.labelnames = local, remote, tuple(labelnames)
        self.levels: dict[tuple[str, ...], float] = {}  # gauges: Ray's Gauge can only be set

    def labels(self, *values: str) -> "Child":
        return Child(self, tuple(str(v) for v in values))

    def sample(self, values: tuple[str, ...]) -> prometheus_client.metrics.MetricWrapperBase:
        """The local child for these label values (prometheus_client has no labels() without label names)."""
        return self.local.labels(*values) if self.labelnames else self.local


class Child:
    def __init__(self, family: Family, values: tuple[str, ...]) -> None:
        self.family, self.values = family, values
        self.tags = dict(zip(family.labelnames, values))

    def inc(self, amount: float = 1.0) -> None:
        self.family.sample(self.values).inc(amount)
        if isinstance(self.family.remote, ray_metrics.Gauge):
            self._set_level(amount)
        elif amount > 0:  # Ray's Counter refuses 0
            self.family.remote.inc(amount, tags=self.tags)

    def dec(self, amount: float = 1.0) -> None:
        self.family.sample(self.values).dec(amount)
        self._set_level(-amount)

    def observe(self, value: float) -> None:
        self.family.sample(self.values).observe(value)
        self.family.remote.observe(value, tags=self.tags)

    def _set_level(self, delta: float) -> None:
        level = self.family.levels.get(self.values, 0.0) + delta
        self.family.levels[self.values] = level
        self.family.remote.set(level, tags=self.tags)


def counter(name: str, doc: str, labelnames: Sequence[str], registry: prometheus_client.CollectorRegistry) -> Family:
    local = prometheus_client.Counter(LOCAL_PREFIX + name, doc, labelnames, registry=registry)
    return Family(local, ray_metrics.Counter(RAY_PREFIX + name, doc, tuple(labelnames)), labelnames)


def gauge(name: str, doc: str, labelnames: Sequence[str], registry: prometheus_client.CollectorRegistry) -> Family:
    local = prometheus_client.Gauge(LOCAL_PREFIX + name, doc, labelnames, registry=registry)
    return Family(local, ray_metrics.Gauge(RAY_PREFIX + name, doc, tuple(labelnames)), labelnames)


def histogram(name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float],
              registry: prometheus_client.CollectorRegistry) -> Family:
    local = prometheus_client.Histogram(LOCAL_PREFIX + name, doc, labelnames, buckets=buckets, registry=registry)
    remote = ray_metrics.Histogram(RAY_PREFIX + name, doc, [float(b) for b in buckets], tuple(labelnames))
    return Family(local, remote, labelnames)
