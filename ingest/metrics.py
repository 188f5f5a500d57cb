"""What the ingest server has done, for Prometheus: `GET /metrics`.

Requests are counted in plain integers in each process (a dict increment and a bucket
of the latency histogram: well under a microsecond a request). With INGEST_PROCESSES=N
a scrape reaches one process of N, so each publishes its totals to Redis every second
(a key per process, expiring after PUBLISH_TTL_S) and answers with the sum over all of
them: the server's totals, whichever process is asked. A process that stops takes its
counts with it, which Prometheus reads as a counter reset, as it would of a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from common.constants import METRICS_SUFFIX
from common.redis_clients import REDIS_FAILURES, AsyncRedis

if TYPE_CHECKING:
    from ingest.edge import EdgeGuard

logger = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 1.0
PUBLISH_TTL_S = 15
# Request latency, seconds: an event is answered in about a millisecond when Redis keeps up.
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_NAME = "analytics_ingest"


class IngestMetrics:
    """One process's counts since it started; with `edge`, its server's connection guard,
    whose counts of connections closed to protect the server go out with them."""

    def __init__(self, edge: EdgeGuard | None = None) -> None:
        self.edge = edge
        self.requests: dict[str, Counter[int]] = {}  # route: answers by status
        self.events_accepted = 0
        self.events_ignored: Counter[str] = Counter()  # by reason
        self.events_rejected = 0  # invalid events (a 400, or a batch's rejected ones)
        self.redis_writes = 0
        self.events_written = 0
        self.latency_counts = [0] * (len(LATENCY_BOUNDS) + 1)  # the last: above every bound
        self.latency_sum = 0.0

    def statuses_of(self, route: str) -> Counter[int]:
        """The counts of a route's answers by status, for its endpoint to add to (it also
        adds to latency_counts and latency_sum: inline, on the hot path)."""
        return self.requests.setdefault(route, Counter())

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": [
                [route, status, n]
                for route, statuses in self.requests.items()
                for status, n in statuses.items()
            ],
            "events_accepted": self.events_accepted,
            "events_ignored": dict(self.events_ignored),
            "events_rejected": self.events_rejected,
            "redis_writes": self.redis_writes,
            "events_written": self.events_written,
            "latency_counts": self.latency_counts,
            "latency_sum": self.latency_sum,
            "connections_closed": {} if self.edge is None else self.edge.closed_by_reason(),
        }


class MetricsPublisher:
    """Publishes this process's snapshot every second; reads every live process's."""

    def __init__(self, client: AsyncRedis, stream_key: str, metrics: IngestMetrics):
        self._client = client
        self._prefix = stream_key + METRICS_SUFFIX
        self._key = f"{self._prefix}{socket.gethostname()}:{os.getpid()}"
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            try:
                await self._publish()
            except REDIS_FAILURES as exc:  # Redis away: the next second tries again
                logger.debug("cannot publish metrics: %r", exc)

    async def _publish(self) -> None:
        payload = orjson.dumps(self.metrics.snapshot())
        await self._client.set(self._key, payload, ex=PUBLISH_TTL_S)

    async def all_snapshots(self) -> list[dict[str, Any]]:
        """Every live process's snapshot; this process's own as of now."""
        await self._publish()
        keys = [key async for key in self._client.scan_iter(match=f"{self._prefix}*")]
        # GETs in a pipeline, not one MGET: on a cluster the keys lie in different slots.
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            values = await pipe.execute()
        return [orjson.loads(value) for value in values if value is not None]


def exposition(snapshots: list[dict[str, Any]], backlog: int) -> CollectorRegistry:
    """The summed snapshots as Prometheus metric families, in a registry of their own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Summed(snapshots, backlog))
    return registry


class _Summed(Collector):
    def __init__(self, snapshots: list[dict[str, Any]], backlog: int):
        self._snapshots = snapshots
        self._backlog = backlog

    def collect(self) -> Any:
        snapshots = self._snapshots
        requests = CounterMetricFamily(
            f"{_NAME}_requests", "HTTP requests to the ingest routes", labels=["route", "status"]
        )
        by_label: Counter[tuple[str, str]] = Counter()
        for snapshot in snapshots:
            for route, status, count in snapshot["requests"]:
                by_label[route, str(status)] += count
        for labels, count in sorted(by_label.items()):
            requests.add_metric(list(labels), count)
        yield requests
        yield _total("events_accepted", "Events appended to the stream (answered 202)", snapshots)
        ignored = CounterMetricFamily(
            f"{_NAME}_events_ignored",
            "Events not stored on purpose (bots, sites not registered, ...)",
            labels=["reason"],
        )
        reasons: Counter[str] = Counter()
        for snapshot in snapshots:
            reasons.update(snapshot["events_ignored"])
        for reason, count in sorted(reasons.items()):
            ignored.add_metric([reason], count)
        yield ignored
        yield _total("events_rejected", "Invalid events, refused with a 400", snapshots)
        closed = CounterMetricFamily(
            f"{_NAME}_connections_closed",
            "Connections closed or refused to protect the server (ingest/edge.py), by reason",
            labels=["reason"],
        )
        closed_for: Counter[str] = Counter()
        for snapshot in snapshots:  # (a process of an older release has none)
            closed_for.update(snapshot.get("connections_closed", {}))
        for reason, count in sorted(closed_for.items()):
            closed.add_metric([reason], count)
        yield closed
        yield _total("redis_writes", "Writes to the stream (each of many events)", snapshots)
        yield _total("events_written", "Events in those writes", snapshots)
        counts = [
            sum(s["latency_counts"][i] for s in snapshots) for i in range(len(LATENCY_BOUNDS) + 1)
        ]
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, LATENCY_BOUNDS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        latency = HistogramMetricFamily(
            f"{_NAME}_request_duration_seconds", "Time to answer an ingest request"
        )
        latency.add_metric([], buckets, sum(s["latency_sum"] for s in snapshots))
        yield latency
        yield GaugeMetricFamily(
            f"{_NAME}_backlog", "Stream entries waiting for the processors", value=self._backlog
        )


def _total(name: str, help_text: str, snapshots: list[dict[str, Any]]) -> CounterMetricFamily:
    return CounterMetricFamily(f"{_NAME}_{name}", help_text, value=sum(s[name] for s in snapshots))
