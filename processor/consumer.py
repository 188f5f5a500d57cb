"""The consumer loop: read a batch from the group, store it, then acknowledge it.

Acknowledging only after the commit gives at-least-once delivery; the idempotent store
(see store.py) turns that into exactly-once figures. Around that core:

- the next batch is read while the current one is written, when there is a backlog;
- PostgreSQL or Redis unavailable: the batch in hand is kept and retried with capped
  exponential backoff, acknowledging nothing, and failures are logged once per interval;
- an entry the database rejects is isolated by splitting the batch, and dead-lettered
  with the error; one delivered more than MAX_DELIVERIES times is acknowledged if it was
  stored already, and otherwise stored by itself, after the rest of its batch: one that
  stops its consumer ALONE_ATTEMPTS times even so is dead-lettered, with that reason.
  No entry blocks the stream, and only entries that failed are dead-lettered;
- a consumer group that vanishes (deleted, Redis restarted empty) is created again from
  the stream's start, wherever the loss shows: entries stored already are duplicates;
- a monthly partition that cannot be made leaves its batch pending, retried and logged
  as an error, until an operator fixes it: events are never dead-lettered for it;
- acknowledgements and dead letters work at Redis's maxmemory (see full_redis.py);
- entries that a stopped consumer left pending are taken over with XAUTOCLAIM;
- stopping (SIGTERM, SIGINT) finishes, commits and acknowledges the batch in hand.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import asyncpg
from redis.exceptions import ResponseError

from common.config import Settings
from common.redis_clients import REDIS_FAILURES, AsyncRedis
from common.stopping import stopped_within
from processor import maintenance
from processor.decode import DecodedBatch, Entry, Row, decode_entries
from processor.full_redis import AloneAttempts, DeadLetterWriter, GroupCreator
from processor.health import Health
from processor.maintenance import parse_id
from processor.metrics import ProcessorMetrics
from processor.months import MonthCloser
from processor.store import Counting, EventStore, PartitionUnavailable, StoreResult
from processor.tally import record_dead_letters, where_from

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BACKOFF_S = 10.0
# Attempts to store an entry by itself that may end in a crash before it is dead-lettered.
ALONE_ATTEMPTS = 3
LOG_EVERY_S = 30.0
# Errors caused by the data of some row: isolate the row instead of retrying the batch.
POISON = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
# Anything else from PostgreSQL or Redis is retried until it works or we stop.
# (A partition that cannot be created is the operator's to fix: its events wait.)
UNAVAILABLE = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    PartitionUnavailable,
    *REDIS_FAILURES,
    TimeoutError,
)


class Stopping(Exception):
    """Stop was requested while a batch could not be stored: leave it pending."""


class FailureLog:
    """Logs the first failure of a kind, then at most once per interval, then recovery;
    and keeps `health` told (under `operation`: the kind and the consumer)."""

    def __init__(self, what: str, health: Health, operation: str):
        self._what = what
        self._health = health
        self._operation = operation
        self._failures = 0
        self._last_logged = 0.0

    def failed(self, exc: BaseException, delay: float) -> None:
        self._failures += 1
        self._health.failed(self._operation, exc)
        now = time.monotonic()
        if self._failures == 1 or now - self._last_logged >= LOG_EVERY_S:
            self._last_logged = now
            logger.error(
                "%s failed (%d attempts so far), retrying in %.1f s: %r",
                self._what,
                self._failures,
                delay,
                exc,
            )

    def succeeded(self) -> None:
        if self._failures:
            logger.warning("%s works again after %d failed attempts", self._what, self._failures)
            self._failures = 0
            self._health.recovered(self._operation)


class StreamProcessor:
    def __init__(
        self,
        settings: Settings,
        client: AsyncRedis,
        pool: asyncpg.Pool,
        health: Health | None = None,
        metrics: ProcessorMetrics | None = None,
        counting: Counting | None = None,
        entry_prefix: bytes = b"",
    ):
        """`settings`: of one stream (a shard's, common/shards.py); `entry_prefix`: that
        shard's number, in front of the entry ids the ledger keeps."""
        self._settings = settings
        self._entry_prefix = entry_prefix
        self.health = Health() if health is None else health
        self.metrics = ProcessorMetrics() if metrics is None else metrics
        self._redis = client
        self._pool = pool
        self.counting = counting or Counting(
            visits=settings.count_visits, max_age_s=settings.max_age_seconds
        )
        self._months = MonthCloser(settings.max_age_seconds)
        self._store = EventStore(
            pool, registered_only=settings.sites_mode == "registered", counting=self.counting
        )
        self._group_creator = GroupCreator(client, settings.stream_key, settings.consumer_group)
        self._attempts = AloneAttempts(client, settings.alone_attempts_key)
        self._dead_letters = DeadLetterWriter(
            client, settings.stream_key, settings.consumer_group, settings.dead_letter_key
        )
        self._stream = settings.stream_key
        self._group = settings.consumer_group
        self._consumer = settings.consumer_name
        self._stop = asyncio.Event()
        self._failure_logs: dict[str, FailureLog] = {}
        self._acknowledging: asyncio.Task[None] | None = None
        self.entries_processed = 0
        self.first_batch_at: float | None = None  # perf_counter() when the first batch began

    async def ensure_group(self) -> None:
        """Create the group from the stream's start, so nothing enqueued earlier is skipped
        (also at maxmemory, where XGROUP CREATE itself is refused: see full_redis.py)."""
        if await self._group_creator.create():
            logger.info("created consumer group %s on %s", self._group, self._stream)

    async def _recreate_group(self) -> bool:
        """The group vanished (deleted, or Redis restarted empty): create it again from
        the start of the stream. Entries stored already come again and are found to be
        duplicates; none is skipped. False when it cannot be created now."""
        logger.warning("consumer group %s is gone: creating it again", self._group)
        try:
            await self.ensure_group()
        except UNAVAILABLE as exc:
            logger.warning("cannot create consumer group %s yet: %r", self._group, exc)
            return False
        return True

    async def run(self, stop: asyncio.Event, *, drain: bool = False, maintain: bool = True) -> None:
        """Process until `stop` is set, or, with `drain`, until no entry is left to read.
        `maintain`: also trim the stream and manage partitions now and then (one writer
        per process does)."""
        self._stop = stop
        loop = asyncio.get_running_loop()
        next_claim = next_maintenance = loop.time()
        # After a restart under the same name, entries delivered to us before come first.
        reread_own = True
        prefetched: asyncio.Task[tuple[list[Entry], DecodedBatch]] | None = None
        try:
            await self._retrying("creating the consumer group", self.ensure_group)
            while True:
                if stop.is_set():
                    if prefetched is not None:  # already delivered to us: finish it too
                        await self._process(*await prefetched)
                    break
                if maintain and loop.time() >= next_maintenance:
                    await self.maintain()
                    next_maintenance = loop.time() + self._settings.maintenance_interval_ms / 1000
                if loop.time() >= next_claim:
                    await self._retrying("claiming abandoned entries", self.claim_abandoned)
                    next_claim = loop.time() + self._settings.claim_interval_ms / 1000
                decoded: DecodedBatch | None = None
                if prefetched is not None:
                    (entries, decoded), prefetched = await prefetched, None
                else:
                    if reread_own:  # what we hold, less what we are acknowledging
                        await self._acknowledged()
                    read = functools.partial(
                        self._read, "0" if reread_own else ">", block=not drain
                    )
                    entries = await self._retrying("reading the stream", read)
                if not entries:
                    if reread_own:
                        reread_own = False
                        continue
                    if drain:
                        break
                    continue
                if not reread_own and len(entries) == self._settings.batch_size:
                    # A backlog: read and decode the next batch while this one is written.
                    prefetched = asyncio.create_task(self._read_ahead())
                await self._process(entries, decoded, redelivered=reread_own)
            await self._acknowledged()
        except Stopping:
            if prefetched is not None:  # read but not processed: stays pending to us
                prefetched.cancel()
                await asyncio.gather(prefetched, return_exceptions=True)

    async def claim_abandoned(self) -> int:
        """Take over and process entries idle in other consumers' pending lists."""
        await self._acknowledged()
        claimed = 0
        start: bytes = b"0-0"
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
                self.metrics.claimed.inc(len(entries))
                await self._process(entries, redelivered=True)
                claimed += len(entries)
            if start == b"0-0":
                await self._acknowledged()
                return claimed

    async def _process(
        self,
        entries: list[Entry],
        decoded: DecodedBatch | None = None,
        *,
        redelivered: bool = False,
    ) -> DecodedBatch:
        """Store one batch, then start acknowledging it: the acknowledgement overlaps the
        next batch's decoding and writing (it only has to follow its own commit)."""
        started = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = started
        batch = decode_entries(entries, self._entry_prefix) if decoded is None else decoded
        rows, row_ids = batch.rows, batch.row_ids
        alone: list[tuple[Row, bytes]] = []
        if redelivered and rows:
            rows, row_ids, alone = await self._separate_suspects(batch)
        decoded_at = time.perf_counter()
        result = await self._store_isolating(rows, row_ids, batch.rejected)
        if alone:
            # Acknowledge the rest first: a crash among the suspects must not make
            # suspects of their neighbours too.
            stored = [i for i in row_ids if i not in batch.rejected]
            if stored:
                ack = functools.partial(self._redis.xack, self._stream, self._group, *stored)
                await self._retrying("acknowledging", ack)
            result += await self._store_alone(alone, batch.rejected)
        fields = dict(entries)
        if batch.rejected:  # in the ledger before they move: a crash between counts once
            await self._retrying(
                "counting dead letters", functools.partial(self._count_dead, batch, fields)
            )
        stored_at = time.perf_counter()
        await self._acknowledged()  # the previous batch's, so that they stay in order
        acknowledge = functools.partial(self._acknowledge, batch, fields)
        self._acknowledging = asyncio.create_task(self._retrying("acknowledging", acknowledge))
        self.entries_processed += len(entries)
        duplicates = result.duplicates
        self.metrics.batch(
            entries=len(entries),
            stored=result.inserted,
            duplicates=duplicates,
            dead_lettered=len(batch.rejected),
            seconds=stored_at - started,
        )
        logger.info(
            "batch: %d entries, %d new rows, %d duplicates, %d rejected, %.1f ms",
            len(entries),
            result.inserted,
            duplicates,
            len(batch.rejected),
            (stored_at - started) * 1000,
        )
        logger.debug(
            "batch steps: decode %.1f ms, store %.1f ms, wait for the previous XACK %.1f ms",
            (decoded_at - started) * 1000,
            (stored_at - decoded_at) * 1000,
            (time.perf_counter() - stored_at) * 1000,
        )
        return batch

    async def _count_dead(self, batch: DecodedBatch, fields: dict[bytes, Any]) -> None:
        prefix = self._entry_prefix
        where = {
            prefix + entry_id: where_from(entry_id, fields.get(entry_id))
            for entry_id in batch.rejected
        }
        async with self._pool.acquire() as conn:
            await record_dead_letters(conn, where)

    async def _acknowledged(self) -> None:
        """Wait until the last batch handed to `_process` is acknowledged."""
        if self._acknowledging is not None:
            task, self._acknowledging = self._acknowledging, None
            await task

    async def _store_isolating(
        self, rows: list[Row], row_ids: list[bytes], rejected: dict[bytes, str]
    ) -> StoreResult:
        """Store the rows; a row the database refuses is added to `rejected`, its
        neighbours stored: the batch is split in halves until the bad rows stand alone."""
        if not rows:
            return StoreResult(0, 0)
        try:
            return await self._retrying("storing a batch", lambda: self._store.store(rows))
        except POISON as exc:
            if len(rows) == 1:
                rejected[row_ids[0]] = f"refused by the database: {exc!r}"
                return StoreResult(0, 0)
            middle = len(rows) // 2
            first = await self._store_isolating(rows[:middle], row_ids[:middle], rejected)
            second = await self._store_isolating(rows[middle:], row_ids[middle:], rejected)
            return first + second

    async def _separate_suspects(
        self, batch: DecodedBatch
    ) -> tuple[list[Row], list[bytes], list[tuple[Row, bytes]]]:
        """Split a redelivered batch into the rows to store together and the suspects,
        each to be stored by itself. A suspect has been delivered more than
        MAX_DELIVERIES times and is not stored yet: it may be what keeps stopping its
        consumers (a crash in the middle of its batch), or only the neighbour of one, or
        of many kills. One stored already (its acknowledgement was what failed) is
        simply acknowledged with the batch."""
        ids = batch.row_ids
        first, last = min(ids, key=parse_id), max(ids, key=parse_id)
        details = await self._retrying(
            "reading delivery counts",
            lambda: self._redis.xpending_range(
                self._stream,
                self._group,
                min=first,
                max=last,
                count=len(ids) + self._settings.batch_size,
                consumername=self._consumer,
            ),
        )
        counts = {d["message_id"]: int(d["times_delivered"]) for d in details}
        limit = self._settings.max_deliveries
        over = [i for i, entry_id in enumerate(ids) if counts.get(entry_id, 0) > limit]
        if not over:
            return batch.rows, ids, []
        stored = await self._retrying(
            "looking up stored events",
            lambda: self._store.stored_keys([batch.rows[i] for i in over]),
        )
        suspects = {i for i in over if (batch.rows[i][1], batch.rows[i][0]) not in stored}
        together = [i for i in range(len(ids)) if i not in suspects]
        return (
            [batch.rows[i] for i in together],
            [ids[i] for i in together],
            [(batch.rows[i], ids[i]) for i in sorted(suspects)],
        )

    async def _store_alone(
        self, suspects: list[tuple[Row, bytes]], rejected: dict[bytes, str]
    ) -> StoreResult:
        """Store each suspect in a transaction of its own and acknowledge it at once,
        counting the attempts begun in Redis first. Dead letters need evidence about the
        entry itself: only one that stopped its consumer ALONE_ATTEMPTS times while
        stored by itself (or that the database refuses) is dead-lettered, with that
        reason; kills of the batches around it are no evidence. (A crash between an
        acknowledgement and its HDEL leaves one small field behind, nothing more.)"""
        logger.warning(
            "storing %d entries delivered more than %d times one at a time",
            len(suspects),
            self._settings.max_deliveries,
        )
        result = StoreResult(0, 0)
        for row, entry_id in suspects:
            begun = await self._retrying(
                "counting an attempt", functools.partial(self._attempts.begin, entry_id)
            )
            if begun > ALONE_ATTEMPTS:
                rejected[entry_id] = (
                    f"stopped its consumer {begun - 1} times while it was being stored by "
                    "itself (a crash, or a kill, each time)"
                )
                continue  # dead-lettered with the batch, then forgotten
            result += await self._store_isolating([row], [entry_id], rejected)
            if entry_id not in rejected:
                ack = functools.partial(self._redis.xack, self._stream, self._group, entry_id)
                await self._retrying("acknowledging", ack)
                await self._retrying(
                    "forgetting attempts", functools.partial(self._attempts.forget, [entry_id])
                )
        return result

    async def _read_ahead(self) -> tuple[list[Entry], DecodedBatch]:
        read = functools.partial(self._read, ">", block=False)
        entries = await self._retrying("reading the stream", read)
        return entries, decode_entries(entries, self._entry_prefix)

    async def _read(self, start_id: str, *, block: bool) -> list[Entry]:
        response = await self._redis.xreadgroup(
            self._group,
            self._consumer,
            {self._stream: start_id},
            count=self._settings.batch_size,
            block=self._settings.block_ms if block else None,
        )
        # RESP2 shape (redis-py's default): [[stream, [(id, fields), ...]]]
        entries: list[Entry] = cast(Any, response)[0][1] if response else []
        if start_id == ">":  # a read of new entries that did not fill a batch: no backlog
            self.counting.caught_up = len(entries) < self._settings.batch_size
        return entries

    async def _acknowledge(self, batch: DecodedBatch, fields: dict[bytes, Any]) -> None:
        """Acknowledge the batch: the stored entries (and duplicates) with a plain XACK,
        which Redis accepts even at maxmemory (a MULTI it refuses there, and an XACK
        frees memory); the rejected ones dead-lettered and acknowledged atomically."""
        rejected = batch.rejected
        handled = [entry_id for entry_id in batch.entry_ids if entry_id not in rejected]
        if handled:
            await self._redis.xack(self._stream, self._group, *handled)
        if rejected:
            for entry_id, reason in rejected.items():
                logger.warning("dead-lettering entry %s: %s", entry_id.decode(), reason)
            await self._dead_letters.move(rejected, fields)
            await self._attempts.forget(list(rejected))

    async def _measure_lag(self) -> None:
        for group in await self._redis.xinfo_groups(self._stream):
            if group["name"] == self._group.encode():
                self.metrics.pending.set(group["pending"])
                if group.get("lag") is not None:  # None where Redis cannot tell (Redis 7)
                    self.metrics.lag.set(group["lag"])

    async def maintain(self) -> None:
        """Trim the stream, keep partitions ahead, apply retention: failures only logged."""
        try:
            floor = await maintenance.trim_stream(self._redis, self._stream)
            await self._measure_lag()
            async with self._pool.acquire() as conn:
                if floor is not None:
                    await maintenance.forget_trimmed_entries(conn, floor, self._entry_prefix)
                await maintenance.keep_partitions_ahead(conn, self._store)
                if self._settings.retention_days:
                    await maintenance.apply_retention(conn, self._settings.retention_days)
                await self._months.maybe_close(conn)
        except UNAVAILABLE as exc:
            logger.warning("maintenance failed, will try again: %r", exc)
            self.health.failed("maintenance", exc)
        else:
            self.health.recovered("maintenance")

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it works; on failure back off (capped, jittered). POISON
        errors are the caller's to handle; a stop request ends the retries (Stopping)."""
        log = self._failure_logs.get(what)
        if log is None:
            log = self._failure_logs[what] = FailureLog(
                what, self.health, f"{self._consumer}: {what}"
            )
        failures = 0
        while True:
            try:
                result = await attempt()
            except POISON:
                raise
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                # Another processor won a race for the same rows: try again at once.
                logger.debug("%s: %r, retrying", what, exc)
                await asyncio.sleep(random.uniform(0, 0.05))
                continue
            except UNAVAILABLE as exc:
                if _lost_group(exc) and await self._recreate_group():
                    continue
                failures += 1
                delay = min(MAX_BACKOFF_S, 0.05 * 2**failures) * random.uniform(0.5, 1.0)
                log.failed(exc, delay)
                if await stopped_within(self._stop, delay):
                    raise Stopping from exc
                continue
            log.succeeded()
            return result


def _lost_group(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and "NOGROUP" in str(exc)
