"""A few Prometheus metrics written by hand (text format 0.0.4): counters,
gauges read at scrape time, and latency histograms. No extra dependency."""

from __future__ import annotations

import threading
from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Counter:
    def __init__(self, name: str, help: str):
        self.name, self.help = name, help
        self.values: dict[tuple, float] = {}
        self.lock = threading.Lock()

    def inc(self, amount: float = 1, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self.lock:
            self.values[key] = self.values.get(key, 0) + amount

    def get(self, **labels) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self.lock:
            items = sorted(self.values.items())
        lines += [f"{self.name}{_labels(dict(k))} {v:g}" for k, v in items] or [f"{self.name} 0"]
        return lines


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.read():g}"]


class Histogram:
    def __init__(self, name: str, help: str, buckets=LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self.lock:
            self.sum += value
            self.count += 1
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self.lock:
            for bound, count in zip(self.buckets, self.counts):
                lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {count}')
            lines += [f'{self.name}_bucket{{le="+Inf"}} {self.count}', f"{self.name}_sum {self.sum:g}",
                      f"{self.name}_count {self.count}"]
        return lines


class Metrics:
    """The server's metrics; gauges read the service's live state at scrape time."""

    def __init__(self, service):
        p = "spatialreward"
        self.requests = Counter(f"{p}_requests_total", "HTTP requests by route and status code.")
        self.items = Counter(f"{p}_items_total", "Items judged, by status (ok, error).")
        self.errors = Counter(f"{p}_item_errors_total", "Failed items by stage (input, model, parse).")
        self.rejected = Counter(f"{p}_rejected_items_total", "Items refused with 503 because the queue was full.")
        self.tokens = Counter(f"{p}_generated_tokens_total", "Tokens of the model answers (SC and PQ) behind the results.")
        self.request_latency = Histogram(f"{p}_request_seconds", "Latency of POST /v1/rewards, in seconds.")
        self.item_latency = Histogram(f"{p}_item_seconds", "Latency of one item from admission to result, in seconds.")
        self.gauges = [
            Gauge(f"{p}_queue_depth", "Model requests waiting in the scheduler's queue.", lambda: service.queue_depth),
            Gauge(f"{p}_in_flight_requests", "Model requests inside the backend right now.", lambda: service.in_flight),
            Gauge(f"{p}_pending_items", "Items admitted and not finished.", lambda: service.pending),
            Gauge(f"{p}_ready", "1 when the server is ready.", lambda: 1 if service.ready()[0] else 0),
        ]

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.items, self.errors, self.rejected, self.tokens,
                       self.request_latency, self.item_latency, *self.gauges):
            lines += metric.render()
        return "\n".join(lines) + "\n"
