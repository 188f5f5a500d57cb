"""`make bench`'s Redis Cluster line: single events and processing with STREAM_SHARDS=3 on
a private three-master Redis Cluster (REDIS_CLUSTER=true), against one stream on one
private Redis, in the same rounds, alternating which goes first.

Both Redis set-ups are private servers started here, alike (no persistence), on no
pinned core. What two cores can show: the cost of the cluster's routing to the one
ingest process and the one processor, each on its core, not the capacity it adds: the
three masters share the machine with them and with wrk (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import orjson
import redis

from benchmarks import data, wrk
from benchmarks.context import BenchContext, median, summary
from benchmarks.processes import free_port, http_server
from benchmarks.steps import run_drain
from common.config import Settings
from common.constants import EVENT_FIELD
from common.redis_clients import sync_client
from common.shards import shard_number, shards_of
from tests.servers import PrivateRedis, PrivateRedisCluster

SHARDS = 3
CONNECTIONS = 64
# Single events from this many users in turn, so that the cluster's three shards share them.
BODIES = 300


def cluster_against_one_redis(ctx: BenchContext, events: int) -> dict[str, Any]:
    single = PrivateRedis()
    cluster = PrivateRedisCluster()
    try:
        single.start()
        asyncio.run(single.wait_until_up())
        cluster.start()
        set_ups = {
            "one": {"redis_url": single.url, "stream_shards": 1, "redis_cluster": False},
            "cluster": {
                "redis_url": cluster.url,
                "stream_shards": SHARDS,
                "redis_cluster": True,
                "stream_key": cluster.stream_key_spread(SHARDS),
            },
        }
        return _measure(ctx, events, set_ups, [single, *cluster.nodes])
    finally:
        cluster.close()
        single.close()


def _measure(
    ctx: BenchContext,
    events: int,
    set_ups: dict[str, dict[str, Any]],
    servers: list[PrivateRedis],
) -> dict[str, Any]:
    rng = random.Random(11)
    bodies = [orjson.dumps(data.request_body(rng) | {"user_id": f"u{i}"}) for i in range(BODIES)]
    script = wrk.lua_script(method="POST", bodies=bodies)
    payloads, _ = data.stream_payloads(events)
    ingest: dict[str, list[float]] = {name: [] for name in set_ups}
    processing: dict[str, list[float]] = {name: [] for name in set_ups}
    for round_number in range(ctx.rounds):
        order = list(set_ups) if round_number % 2 == 0 else list(reversed(set_ups))
        for name in order:
            _reset(ctx, servers)
            ingest[name].append(_ingest(ctx, set_ups[name], script, name))
            _reset(ctx, servers)
            processing[name].append(_process(ctx, set_ups[name], payloads, name))
    _reset(ctx, servers)
    return {
        "shards": SHARDS,
        "events": events,
        "requests_per_s": summary(ingest["cluster"]),
        "reference_requests_per_s": summary(ingest["one"]),
        "ingest_ratio": median(
            [c / o for c, o in zip(ingest["cluster"], ingest["one"], strict=True)]
        ),
        "events_per_s": summary(processing["cluster"]),
        "reference_events_per_s": summary(processing["one"]),
        "processing_ratio": median(
            [c / o for c, o in zip(processing["cluster"], processing["one"], strict=True)]
        ),
    }


def _settings(ctx: BenchContext, set_up: dict[str, Any]) -> Settings:
    return dataclasses.replace(ctx.settings, **set_up)


def _ingest(ctx: BenchContext, set_up: dict[str, Any], script: str, name: str) -> float:
    """Requests/s of single events (a 1 s warm-up, then the measured run), checked against
    the events the shards hold."""
    port = free_port()
    env = ctx.env(port=port, max_backlog=10**9, **set_up)
    log = ctx.log_dir / f"cluster-ingest-{name}.log"
    with http_server("ingest", env, port, ctx.service_cpu, log):
        url = f"http://127.0.0.1:{port}/event"
        runs = [
            wrk.run(url, script, connections=CONNECTIONS, seconds=seconds, cpu=ctx.load_cpu)
            for seconds in (1, ctx.seconds)
        ]
    accepted = sum(r.requests - r.non_2xx for r in runs)
    settings = _settings(ctx, set_up)
    client = sync_client(settings)
    try:
        lengths = [int(client.xlen(s.settings.stream_key)) for s in shards_of(settings)]
    finally:
        client.close()
    if sum(lengths) < accepted or (set_up["stream_shards"] > 1 and min(lengths) == 0):
        raise AssertionError(f"{name}: the shards hold {lengths} events, {accepted} accepted")
    return runs[1].rate


def _process(ctx: BenchContext, set_up: dict[str, Any], payloads: list[bytes], name: str) -> float:
    """Entries/s of one processor draining the payloads, preloaded over the shards as the
    ingest server spreads them."""
    settings = _settings(ctx, set_up)
    shards = shards_of(settings)
    client = sync_client(settings)
    try:
        pipe = client.pipeline(transaction=False)
        for payload in payloads:
            event = orjson.loads(payload)
            visitor = event.get("user_id") or event.get("visitor_id")
            number = shard_number(event["site_id"], visitor, len(shards))
            pipe.xadd(shards[number].settings.stream_key, {EVENT_FIELD: payload})
        pipe.execute()
    finally:
        client.close()
    return run_drain(ctx, len(payloads), f"cluster-processor-{name}", **set_up)[0]


def _reset(ctx: BenchContext, servers: list[PrivateRedis]) -> None:
    """Empty every private Redis (each master of the cluster its own slots) and the tables."""
    for server in servers:
        with redis.Redis.from_url(server.url) as client:
            client.flushall()
    ctx.empty_tables()
