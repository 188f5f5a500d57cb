"""The consumer loop: read a batch from the group, store it, then acknowledge it.

Acknowledging only after the commit gives at-least-once delivery; the idempotent store
(see store.py) turns that into exactly-once figures. Entries that a stopped consumer
left pending are taken over with XAUTOCLAIM once idle long enough.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from common.config import Settings
from processor.decode import DecodedBatch, Entry, decode_entries
from processor.store import store_rows

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, RedisError, OSError, TimeoutError)


class StreamProcessor:
    def __init__(self, settings: Settings, client: redis.Redis, pool: asyncpg.Pool):
        self._settings = settings
        self._redis = client
        self._pool = pool
        self._stream = settings.stream_key
        self._group = settings.consumer_group
        self._consumer = settings.consumer_name
        self.entries_processed = 0
        self.first_batch_at: float | None = None  # perf_counter() when the first batch began

    async def ensure_group(self) -> None:
        """Create the consumer group from the stream's start, so nothing enqueued earlier is skipped."""
        try:
            await self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
            logger.info("created consumer group %s on %s", self._group, self._stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Process until `stop` is set, or, with `drain`, until no entry is left to read."""
        await self.ensure_group()
        loop = asyncio.get_running_loop()
        next_claim = loop.time()
        # After a restart under the same name, entries delivered to us before come first.
        reread_own = True
        failures = 0
        while not stop.is_set():
            try:
                if loop.time() >= next_claim:
                    await self.claim_abandoned()
                    next_claim = loop.time() + self._settings.claim_interval_ms / 1000
                entries = await self._read(
                    "0" if reread_own else ">", block=not (drain or reread_own)
                )
                if not entries:
                    if reread_own:
                        reread_own = False
                        continue
                    if drain:
                        return
                    continue
                await self.process(entries)
                failures = 0
            except _FAILURES as exc:
                failures += 1
                delay = min(MAX_BACKOFF_S, 0.1 * 2**failures)
                logger.error(
                    "processing failed (attempt %d), retrying in %.1fs: %r", failures, delay, exc
                )
                reread_own = True  # the failed batch is still pending to us
                await _sleep_unless(stop, delay)

    async def claim_abandoned(self) -> int:
        """Take over and process entries idle in other consumers' pending lists."""
        claimed = 0
        start = b"0-0"
        while True:
            start, entries, _deleted = await self._redis.xautoclaim(
                self._stream,
                self._group,
                self._consumer,
                min_idle_time=self._settings.claim_min_idle_ms,
                start_id=start,
                count=self._settings.batch_size,
            )
            if entries:
                logger.info("claimed %d abandoned entries", len(entries))
                await self.process(entries)
                claimed += len(entries)
            if start == b"0-0":
                return claimed

    async def process(self, entries: list[Entry]) -> DecodedBatch:
        started = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = started
        batch = decode_entries(entries)
        decoded_at = time.perf_counter()
        inserted = 0
        if batch.rows:
            async with self._pool.acquire() as conn:
                result = await store_rows(conn, batch.rows)
            inserted = result.inserted
        stored_at = time.perf_counter()
        await self._acknowledge(batch)
        acknowledged_at = time.perf_counter()
        self.entries_processed += len(entries)
        logger.info(
            "batch: %d entries, %d new rows, %d duplicates, %d rejected, %.1f ms",
            len(entries),
            inserted,
            len(batch.rows) - inserted,
            len(batch.rejected),
            (acknowledged_at - started) * 1000,
        )
        logger.debug(
            "batch steps: decode %.1f ms, store %.1f ms, acknowledge %.1f ms",
            (decoded_at - started) * 1000,
            (stored_at - decoded_at) * 1000,
            (acknowledged_at - stored_at) * 1000,
        )
        return batch

    async def _read(self, start_id: str, *, block: bool) -> list[Entry]:
        response = await self._redis.xreadgroup(
            self._group,
            self._consumer,
            {self._stream: start_id},
            count=self._settings.batch_size,
            block=self._settings.block_ms if block else None,
        )
        if not response:
            return []
        # RESP2 shape (redis-py's default): [[stream, [(id, fields), ...]]]
        entries: list[Entry] = cast(Any, response)[0][1]
        return entries

    async def _acknowledge(self, batch: DecodedBatch) -> None:
        """Dead-letter the rejected entries and acknowledge the batch, atomically, in one round trip."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry_id, fields, reason in batch.rejected:
                logger.warning("dead-lettering entry %s: %s", entry_id.decode(), reason)
                dead_letter: dict[Any, Any] = {
                    **fields,
                    b"dead_letter_source_id": entry_id,
                    b"dead_letter_reason": reason,
                }
                pipe.xadd(self._settings.dead_letter_key, dead_letter)
            pipe.xack(self._stream, self._group, *batch.entry_ids)
            await pipe.execute()


async def _sleep_unless(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        pass
