"""What a processor has done, for Prometheus: `GET /metrics` on METRICS_PORT.

Counted once per batch, never per event, so the hot path pays nothing it would notice.
The consumer lag (entries the group has not been given yet, and those given but not
acknowledged) is read from Redis by the maintenance round, every MAINTENANCE_INTERVAL_MS.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

# Batches take milliseconds when PostgreSQL keeps up, seconds when it does not.
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ProcessorMetrics:
    """Shared by the consumers of one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        name = "analytics_processor"
        self.batches = Counter(f"{name}_batches", "Batches processed", registry=self.registry)
        self.entries = Counter(
            f"{name}_entries", "Stream entries processed", registry=self.registry
        )
        self.rows_stored = Counter(
            f"{name}_rows_stored", "Events stored, new to their site", registry=self.registry
        )
        self.duplicates = Counter(
            f"{name}_duplicates",
            "Events stored before (redelivered or sent twice): not counted again",
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            f"{name}_dead_lettered",
            "Entries that can never be stored, moved to the dead-letter stream",
            registry=self.registry,
        )
        self.claimed = Counter(
            f"{name}_claimed",
            "Abandoned entries taken over from other consumers (XAUTOCLAIM)",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            f"{name}_batch_duration_seconds",
            "Time to decode, store and commit one batch",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.lag = Gauge(
            f"{name}_consumer_lag",
            "Entries of the stream not yet read by the consumer group",
            registry=self.registry,
        )
        self.pending = Gauge(
            f"{name}_pending",
            "Entries read by the group and not yet acknowledged",
            registry=self.registry,
        )

    def batch(
        self, *, entries: int, stored: int, duplicates: int, dead_lettered: int, seconds: float
    ) -> None:
        self.batches.inc()
        self.entries.inc(entries)
        self.rows_stored.inc(stored)
        self.duplicates.inc(duplicates)
        self.dead_lettered.inc(dead_lettered)
        self.batch_seconds.observe(seconds)


@contextlib.contextmanager
def metrics_server(metrics: ProcessorMetrics, host: str, port: int) -> Iterator[None]:
    """GET /metrics on `port` (0: none), in a thread of its own, for as long as the block."""
    if not port:
        yield
        return
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    logger.info("metrics on http://%s:%d/metrics", host, port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
