"""The processor's GET /metrics (METRICS_PORT): what it did, in Prometheus' text format,
read with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from pathlib import Path

import httpx
import orjson
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from common.config import Settings
from common.constants import EVENT_FIELD
from ingest.validation import parse_event
from tests.conftest import free_port, settings_env
from tests.processes import Service

NOW = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def _samples(text: str) -> dict[str, float]:
    """Every sample without labels by name, and histogram counts."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def _scrape_until(
    http: httpx.AsyncClient, name: str, value: float, within: float = 30
) -> dict[str, float]:
    deadline = time.monotonic() + within
    while True:
        try:
            samples = _samples((await http.get("/metrics")).text)
            if samples.get(name) == value:
                return samples
        except httpx.TransportError:
            pass  # still starting
        assert time.monotonic() < deadline, f"{name} did not reach {value}"
        await asyncio.sleep(0.1)


async def _add(client: redis.Redis, settings: Settings, payloads: list[bytes]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for payload in payloads:
            pipe.xadd(settings.stream_key, {EVENT_FIELD: payload})
        await pipe.execute()


async def test_metrics_move_with_what_the_processor_does(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = dataclasses.replace(settings, metrics_port=free_port(), maintenance_interval_ms=200)
    events = [
        orjson.dumps(
            parse_event(
                orjson.dumps(
                    {"site_id": "m", "event_type": "page_view", "event_id": str(uuid.uuid4())}
                ),
                NOW,
            )
        )
        for _ in range(1_000)
    ]
    await _add(redis_client, settings, [*events, *[b"not json"] * 5])
    processor = Service("processor", settings_env(settings), tmp_path / "processor.log")
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.metrics_port}", timeout=5
        ) as http:
            samples = await _scrape_until(http, "analytics_processor_entries_total", 1_005)
            assert samples["analytics_processor_rows_stored_total"] == 1_000
            assert samples["analytics_processor_dead_lettered_total"] == 5
            assert samples["analytics_processor_duplicates_total"] == 0
            batches = samples["analytics_processor_batches_total"]
            assert batches >= 1
            assert samples["analytics_processor_batch_duration_seconds_count"] == batches

            # The same events again (a client's retry): duplicates, nothing stored twice.
            await _add(redis_client, settings, events[:10])
            samples = await _scrape_until(http, "analytics_processor_duplicates_total", 10)
            assert samples["analytics_processor_rows_stored_total"] == 1_000
            # Nothing left behind once maintenance has looked.
            await _scrape_until(http, "analytics_processor_pending", 0)
            samples = await _scrape_until(http, "analytics_processor_consumer_lag", 0)
    finally:
        status = await processor.stop(within=30)
    assert status == 0, processor.output()
