"""What an operator runs the service by: liveness and readiness, metrics, JSON logs."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from common.config import Settings
from tests.conftest import POSTGRES_URL, ROOT, free_port, running_server, settings_env
from tests.processes import Service
from tests.servers import PrivateRedis
from tests.test_edge_http import CHROME


async def _ready(http: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    answer = await http.get("/readyz")
    return answer.status_code, answer.json()


async def _until(
    http: httpx.AsyncClient, check: Callable[[int, dict[str, Any]], bool], within: float = 15
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        status, body = await _ready(http)
        if check(status, body):
            return body
        assert time.monotonic() < deadline, f"readiness stayed {status} {body}"
        await asyncio.sleep(0.1)


async def test_readiness_flips_with_redis_while_liveness_holds(
    settings: Settings, private_redis: PrivateRedis
) -> None:
    private_redis.start()
    await private_redis.wait_until_up()
    settings = dataclasses.replace(settings, redis_url=private_redis.url)
    with running_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            await _until(http, lambda status, body: status == 200)
            assert (await _ready(http))[1] == {"status": "ready"}

            private_redis.kill()
            body = await _until(http, lambda status, body: status == 503)
            assert body["status"] == "unavailable" and list(body["failed"]) == ["redis"]
            assert (await http.get("/healthz")).json() == {"status": "ok"}  # alive all along
            assert (await http.get("/health")).status_code == 200

            private_redis.start()
            await _until(http, lambda status, body: status == 200)

            # Full: Redis answers, but refuses writes, as it refuses the stream's.
            client = redis.Redis.from_url(private_redis.url)
            try:
                await client.config_set("maxmemory-policy", "noeviction")
                await client.config_set("maxmemory", 1)
                body = await _until(http, lambda status, body: status == 503)
                assert "maxmemory" in body["failed"]["redis"]
                await client.config_set("maxmemory", 0)
            finally:
                await client.aclose()
            await _until(http, lambda status, body: status == 200)


@pytest.mark.parametrize("database", ["unreachable", "not_migrated"])
async def test_readiness_names_postgresql_when_it_is_away_or_its_schema_is_not_current(
    settings: Settings, database: str
) -> None:
    if database == "unreachable":
        database_url = f"postgresql://postgres@127.0.0.1:{free_port()}/analytics"
    else:  # a database that exists, with none of our tables
        database_url = f"{POSTGRES_URL}/postgres"
    settings = dataclasses.replace(settings, database_url=database_url)
    with running_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            await asyncio.sleep(0.5)  # the pool's first attempt
            status, body = await _ready(http)
    assert status == 503
    assert list(body["failed"]) == ["postgres"]


def _json_lines(output: bytes) -> list[dict[str, Any]]:
    records = [orjson.loads(line) for line in output.splitlines() if line.strip()]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    return records


def test_json_logs_are_one_object_a_line(settings: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(settings, log_format="json")
    env = settings_env(settings)
    server = Service("ingest", env, tmp_path / "ingest.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}") as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    http.post("/event", json={"site_id": "s", "event_type": "e"})
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
    finally:
        server.kill()
    records = _json_lines(server.output().encode())
    messages = [record["message"] for record in records]
    assert any("Application startup complete" in message for message in messages)
    assert any(record["logger"] == "ingest" for record in records)

    processor = subprocess.run(
        [sys.executable, "-m", "processor", "--drain"],
        cwd=ROOT, env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert processor.returncode == 0, processor.stderr
    assert any("processed" in r["message"] for r in _json_lines(processor.stderr))


def test_a_log_format_out_of_its_range_stops_the_service(settings: Settings) -> None:
    env = {**settings_env(settings), "LOG_FORMAT": "xml"}
    result = subprocess.run(
        [sys.executable, "-m", "ingest"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert b"LOG_FORMAT must be one of text, json" in result.stderr


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_ingest_metrics_move_with_traffic(http: httpx.AsyncClient) -> None:
    browser = {"user-agent": CHROME}
    event = {"site_id": "m", "event_type": "page_view"}
    for _ in range(3):
        assert (await http.post("/event", json=event, headers=browser)).status_code == 202
    assert (await http.post("/event", json={"site_id": "m"}, headers=browser)).status_code == 400
    bot = {"user-agent": "Googlebot/2.1"}
    assert (await http.post("/event", json=event, headers=bot)).json()["status"] == "ignored"
    batch = await http.post("/events", json=[event, event, {"event_type": "x"}], headers=browser)
    assert batch.json()["accepted"] == 2

    answer = await http.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain")
    samples = _samples(answer.text)
    name = "analytics_ingest"
    assert samples[f"{name}_requests_total", (("route", "/event"), ("status", "202"))] == 4
    assert samples[f"{name}_requests_total", (("route", "/event"), ("status", "400"))] == 1
    assert samples[f"{name}_requests_total", (("route", "/events"), ("status", "202"))] == 1
    assert samples[f"{name}_events_accepted_total", ()] == 5
    assert samples[f"{name}_events_ignored_total", (("reason", "bot"),)] == 1
    assert samples[f"{name}_events_rejected_total", ()] == 2
    assert samples[f"{name}_events_written_total", ()] == 5
    # One after another: a write each at most (the bot's and the invalid event's: their
    # counts in the delivery ledger).
    assert 1 <= samples[f"{name}_redis_writes_total", ()] <= 6
    assert samples[f"{name}_request_duration_seconds_count", ()] == 6
    assert (f"{name}_backlog", ()) in samples
