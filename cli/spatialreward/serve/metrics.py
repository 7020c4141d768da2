"""The server's Prometheus metrics, kept by ``prometheus_client``: counters,
gauges read at scrape time from the service, and latency histograms.

Each ``Metrics`` has its own ``CollectorRegistry`` (never the process-wide
default), so several services in one process (the tests) keep separate counts.
The thin ``Counter`` wrapper keeps the call the server uses, ``inc(amount=1, **labels)``.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import Counter as _PromCounter
from prometheus_client import Gauge as _PromGauge
from prometheus_client import Histogram as _PromHistogram

PREFIX = "spatialreward"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Counter:
    """A counter with fixed label names: ``inc(amount=1, **labels)``, ``get(**labels)``."""

    def __init__(self, name: str, help: str, registry: CollectorRegistry, labelnames: tuple[str, ...] = ()):
        self.name = name
        self.labelnames = tuple(labelnames)
        self.registry = registry
        self._counter = _PromCounter(name, help, labelnames=self.labelnames, registry=registry)

    def inc(self, amount: float = 1, **labels) -> None:
        if self.labelnames:
            self._counter.labels(**labels).inc(amount)
        elif labels:
            raise ValueError(f"{self.name} has no labels, got {sorted(labels)}")
        else:
            self._counter.inc(amount)

    def get(self, **labels) -> float:
        """The current count for these labels (0 for a combination never counted)."""
        value = self.registry.get_sample_value(self.name, {k: str(v) for k, v in labels.items()})
        return value or 0.0


class Histogram:
    """A latency histogram: ``observe(seconds)``; ``count`` and ``sum`` for tests."""

    def __init__(self, name: str, help: str, registry: CollectorRegistry, buckets=LATENCY_BUCKETS):
        self.name = name
        self.registry = registry
        self._histogram = _PromHistogram(name, help, buckets=tuple(buckets), registry=registry)

    def observe(self, value: float) -> None:
        self._histogram.observe(value)

    @property
    def count(self) -> float:
        return self.registry.get_sample_value(f"{self.name}_count") or 0.0

    @property
    def sum(self) -> float:
        return self.registry.get_sample_value(f"{self.name}_sum") or 0.0


class Metrics:
    """The server's metrics; gauges read the service's live state at scrape time."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service):
        p = PREFIX
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(f"{p}_requests_total", "HTTP requests by route and status code.", registry,
                                ("route", "code"))
        self.items = Counter(f"{p}_items_total", "Items judged, by status (ok, error).", registry, ("status",))
        self.errors = Counter(f"{p}_item_errors_total", "Failed items by stage (input, model, parse).", registry,
                              ("stage",))
        self.rejected = Counter(f"{p}_rejected_items_total", "Items refused with 503 because the queue was full.",
                                registry)
        self.tokens = Counter(f"{p}_generated_tokens_total",
                              "Tokens of the model answers (SC and PQ) behind the results.", registry)
        self.cancelled = Counter(f"{p}_cancelled_items_total", "Items cancelled because their client went away.",
                                 registry)
        self.replays = Counter(f"{p}_idempotent_replays_total",
                               "Requests answered from an earlier identical request (same idempotency key).", registry)
        self.policy_failures = Counter(f"{p}_policy_failed_items_total",
                                       "Failed items answered under a caller's on_error policy, by route and policy.",
                                       registry, ("route", "policy"))
        self.request_latency = Histogram(f"{p}_request_seconds", "Latency of POST /v1/rewards, in seconds.", registry)
        self.item_latency = Histogram(f"{p}_item_seconds", "Latency of one item from admission to result, in seconds.",
                                      registry)
        self.gauges: dict[str, _PromGauge] = {}
        for name, help, read in (
            ("queue_depth", "Model requests waiting for the engine.", lambda: service.queue_depth),
            ("in_flight_requests", "Model requests inside the backend right now.", lambda: service.in_flight),
            ("pending_items", "Items admitted and not finished.", lambda: service.pending),
            ("ready", "1 when the server is ready.", lambda: 1 if service.ready()[0] else 0),
            # Read as 0 until the service has these attributes.
            ("admitted_pixels", "Pixels of the admitted, unfinished items' images.",
             lambda: getattr(service, "admitted_pixels", 0)),
            ("prepare_queue_depth", "Items waiting for their images to be decoded and prepared.",
             lambda: getattr(service, "prepare_queue", 0)),
        ):
            gauge = _PromGauge(f"{p}_{name}", help, registry=registry)
            gauge.set_function(read)
            self.gauges[name] = gauge

    def render(self) -> str:
        """The metrics in the text exposition format (``content_type``)."""
        return generate_latest(self.registry).decode("utf-8")
