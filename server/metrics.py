"""Prometheus endpoint (off unless ``--metrics-port``): a collector over ``engine.stats()``.

Values are read at scrape time from the engine's own counters (no double
bookkeeping). Exported: ``stemserve_sessions`` (live), ``stemserve_blocks_in /
_out / _late_total``, ``stemserve_invalid_samples_total``, ``stemserve_batch_size``
(histogram per model; one bucket per batch size the batcher can use, 1 to
``max_batch``, whatever has been seen), ``stemserve_block_ms`` (per-block
latency histogram, label ``kind``: ``live`` real-time sessions, ``file`` file
jobs), ``stemserve_device_memory_bytes`` and ``stemserve_osc_*_total``.
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
        bounds = batch_bounds(self.engine)
        for name, model in stats.get("models", {}).items():
            hist = {int(k): int(v) for k, v in model.get("batch_sizes", {}).items()}
            buckets = [(str(float(b)), sum(v for k, v in hist.items() if k <= b)) for b in bounds]
            buckets.append(("+Inf", sum(hist.values())))
            sizes.add_metric([name], buckets, sum_value=sum(k * v for k, v in hist.items()))
        yield sizes
        block = stats.get("block_ms_histogram")
        if block:
            hist_metric = HistogramMetricFamily(
                "stemserve_block_ms",
                "per-block processing time (ms), live sessions and file jobs apart",
                labels=["kind"],
            )
            for kind, figures in block.items():
                hist_metric.add_metric([kind], [(str(b), c) for b, c in figures["buckets"]], sum_value=figures["sum"])
            yield hist_metric
        extra = self.extra_stats() if self.extra_stats is not None else {}
        for key, value in extra.get("osc", {}).items():
            yield CounterMetricFamily(f"stemserve_osc_{key}", f"OSC {key.replace('_', ' ')}", value=value)


def batch_bounds(engine: Engine) -> list[int]:
    """Every batch size the engine's batchers can run, 1 to the largest: fixed for the server's life."""
    config = engine.config
    largest = config.max_batch if not config.batch_sizes else min(config.max_batch, max(config.batch_sizes))
    return list(range(1, max(1, largest) + 1))


def start_metrics(
    engine: Engine, port: int, host: str = "127.0.0.1", extra_stats: ExtraStats | None = None
) -> CollectorRegistry:
    """Serve ``/metrics`` on ``host:port`` (a daemon thread) from a registry of its own."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine, extra_stats))
    start_http_server(port, addr=host, registry=registry)
    return registry
