"""Prometheus metrics of one app: request counts and latencies per route, engine batch sizes,
engine and projection lag.

Each app owns a ``CollectorRegistry`` (tests build many apps in one process). Lags are computed
when ``/metrics`` is scraped, from the same sources as ``/readyz``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class _LagCollector(Collector):
    def __init__(self, source: Callable[[], dict[str, Any]]) -> None:
        self.source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            status = self.source()
        except Exception:  # a store down: /readyz says so; metrics still answer
            return
        engine = GaugeMetricFamily("spotex_engine_lag", "requests appended but not yet consumed")
        engine.add_metric([], status["engine"]["lag"])
        yield engine
        lag = GaugeMetricFamily(
            "spotex_projection_lag", "exchange-log positions not yet projected", labels=["projection"]
        )
        for name, p in sorted(status["projections"].items()):
            lag.add_metric([name], p["lag"])
        yield lag


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.requests = Counter(
            "spotex_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "spotex_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batches = Histogram(
            "spotex_engine_batch_size", "requests per engine batch", buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.appends = Histogram(
            "spotex_append_batch_size", "requests per requests-log commit (the api's group commit)",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.fast_path = Counter(
            "spotex_http_fast_path_requests", "order requests served by the hot path (api.fastpath)",
            ["route"], registry=self.registry,
        )
        self.ws_connections = Counter(
            "spotex_ws_connections", "WebSocket connections accepted, by how they write "
            "(direct: frames straight to uvicorn's transport; asgi: ASGI send per message)",
            ["path"], registry=self.registry,
        )
        self._lags: _LagCollector | None = None

    def watch(self, source: Callable[[], dict[str, Any]]) -> None:
        """Report engine and projection lag from ``source`` (the readiness status) at each scrape."""
        if self._lags is None:
            self._lags = _LagCollector(source)
            self.registry.register(self._lags)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        # The labelled children, found once per (method, route, status): ``labels`` takes a
        # lock and builds a key on every call. Route templates and statuses are few.
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (self.requests.labels(method, route, str(status)),
                                          self.latency.labels(method, route))
        pair[0].inc()
        pair[1].observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batches.observe(size)

    def observe_append(self, size: int) -> None:
        self.appends.observe(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
