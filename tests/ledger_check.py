"""Writing to the stream as the ingest server does, and checking the delivery ledger."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as redis

from common.config import Settings
from common.constants import LEDGER_SUFFIX
from common.redis_clients import AsyncRedis
from ingest.redis_pipe import CommandPipe, RedisPipe
from ingest.slot_pipe import SlotPipe
from ingest.stream_writer import StreamWriter
from processor.ledger import FLOWS, LedgerDay, LedgerSource, format_day, verify

CHUNK = 5_000


async def write_as_the_edge(
    client: AsyncRedis, stream_key: str, events: list[dict[str, Any]]
) -> None:
    """Append validated events with the ingest server's own writer: their XADDs and their
    counts in the ledger in one transaction per write (on a cluster, to the key's master)."""
    pipe: CommandPipe
    if isinstance(client, redis.RedisCluster):
        await client.initialize()
        node = client.get_default_node()
        pipe = SlotPipe(client, stream_key, f"redis://{node.host}:{node.port}/0")
    else:
        options = client.connection_pool.connection_kwargs
        pipe = RedisPipe(f"redis://{options['host']}:{options['port']}/{options.get('db', 0)}")
    writer = StreamWriter(pipe, stream_key, stream_key + LEDGER_SUFFIX, 30.0)
    try:
        for start in range(0, len(events), CHUNK):
            await writer.append(events[start : start + CHUNK])
    finally:
        await writer.aclose()


async def assert_ledger_balances(
    settings: Settings, client: AsyncRedis, pool: asyncpg.Pool
) -> list[LedgerDay]:
    """Every site-day balances (read once: nothing is moving); returns them."""
    days, different = await verify(LedgerSource.of(client, settings), pool, attempts=1)
    assert days, "the ledger is empty"
    assert not different, "\n".join(map(format_day, different))
    return days


def totals(days: list[LedgerDay]) -> dict[str, int]:
    return {name: sum(getattr(day, name) for day in days) for name in FLOWS}
