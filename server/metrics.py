"""Prometheus endpoint (off unless ``--metrics-port``): a collector over ``engine.stats()``.

Values are read at scrape time from the engine's own counters (no double
bookkeeping). Exported: ``stemserve_sessions`` (live), ``stemserve_blocks_in /
_out / _late_total``, ``stemserve_invalid_samples_total``, ``stemserve_batch_size``
(histogram per model), ``stemserve_block_ms`` (per-block latency histogram),
``stemserve_device_memory_bytes`` and ``stemserve_osc_*_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from stemserve.server.engine.engine import Engine

ExtraStats = Callable[[], Mapping[str, Any]]


class EngineCollector(Collector):
    """Reads the engine's counters (and the transports', via ``extra_stats``) at scrape time."""

    def __init__(self, engine: Engine, extra_stats: ExtraStats | None = None) -> None:
        self.engine = engine
        self.extra_stats = extra_stats

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.stats()
        yield GaugeMetricFamily("stemserve_sessions", "live sessions", value=stats.get("sessions", 0))
        yield GaugeMetricFamily(
            "stemserve_realtime_sessions", "live real-time sessions", value=stats.get("realtime_sessions", 0)
        )
        for key in ("blocks_in", "blocks_out", "blocks_late", "invalid_samples"):
            yield CounterMetricFamily(f"stemserve_{key}", key.replace("_", " "), value=stats.get(key, 0))
        yield GaugeMetricFamily(
            "stemserve_device_memory_bytes", "device memory in use", value=stats.get("device_memory_bytes", 0)
        )
        sizes = HistogramMetricFamily("stemserve_batch_size", "work items per forward pass", labels=["model"])
        for name, model in stats.get("models", {}).items():
            hist = {int(k): int(v) for k, v in model.get("batch_sizes", {}).items()}
            buckets, running = [], 0
            for size in sorted(hist):
                running += hist[size]
                buckets.append((str(float(size)), running))
            buckets.append(("+Inf", running))
            sizes.add_metric([name], buckets, sum_value=sum(k * v for k, v in hist.items()))
        yield sizes
        block = stats.get("block_ms_histogram")
        if block:
            hist_metric = HistogramMetricFamily("stemserve_block_ms", "per-block processing time (ms)")
            hist_metric.add_metric([], [(str(b), c) for b, c in block["buckets"]], sum_value=block["sum"])
            yield hist_metric
        extra = self.extra_stats() if self.extra_stats is not None else {}
        for key, value in extra.get("osc", {}).items():
            yield CounterMetricFamily(f"stemserve_osc_{key}", f"OSC {key.replace('_', ' ')}", value=value)


def start_metrics(
    engine: Engine, port: int, host: str = "127.0.0.1", extra_stats: ExtraStats | None = None
) -> CollectorRegistry:
    """Serve ``/metrics`` on ``host:port`` (a daemon thread) from a registry of its own."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine, extra_stats))
    start_http_server(port, addr=host, registry=registry)
    return registry
