"""Appends events to the Redis stream, coalescing concurrent requests into one write.

Each request hands its encoded events to `append` and awaits its own result. One flush
is in flight at a time; events that arrive meanwhile accumulate and go out together in
the next write, so a busy server makes one Redis round trip per few dozen requests, and
an idle one sends each event at once without waiting on a timer.

Each write is one MULTI/EXEC transaction: the XADDs, and the delivery ledger's counts of
the events accepted, ignored and rejected since the last write (per site and UTC day of
the event: processor/ledger.py). So the ledger can never say accepted what Redis does not
have, nor miss what it has; and a write that fails (Redis full, the connection lost)
leaves none of a request's events behind for its retry to repeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import hiredis
import orjson

from common.constants import EVENT_FIELD, LEDGER_TTL_DAYS, MICROS_PER_DAY
from common.days import utc_date
from ingest.metrics import IngestMetrics
from ingest.redis_pipe import CommandPipe, pack

logger = logging.getLogger(__name__)

_Waiter = tuple[list[bytes], asyncio.Future[None]]

LEDGER_TTL_S = LEDGER_TTL_DAYS * 86_400
# Ignored and rejected events may name sites that do not exist, and nothing else of them
# is kept: a flood of made-up site ids must not grow Redis without bound. Each process
# names at most this many sites a day in those counts; the rest count under OTHER_SITES.
NAMED_SITES_PER_DAY = 10_000
OTHER_SITES = "(other)"

_MULTI = pack("MULTI")
_EXEC = pack("EXEC")


class StreamUnavailable(Exception):
    """Redis did not confirm the events within the time limit: they may not be stored."""


class StreamWriter:
    def __init__(
        self,
        pipe: CommandPipe,
        stream_key: str,
        ledger_key_prefix: str,
        timeout_s: float,
        metrics: IngestMetrics | None = None,
    ):
        self._pipe = pipe
        self.metrics = IngestMetrics() if metrics is None else metrics
        # Every XADD differs only in its last argument: pack the rest once (RESP framing).
        self._xadd_prefix = pack("XADD", stream_key, "*", EVENT_FIELD, b"")[: -len(b"$0\r\n\r\n")]
        self._ledger_key_prefix = ledger_key_prefix
        self._day_keys: dict[int, str] = {}  # days since 1970: the day's ledger key
        # The sites named in ignored and rejected counts, and the day (NAMED_SITES_PER_DAY).
        self._named_sites: tuple[int, set[str]] = (0, set())
        self._timeout_s = timeout_s
        self._pending: list[_Waiter] = []
        # The ledger's counts to send with the next write: (day, field) -> events; the
        # field is "accepted:<site>", "ignored:<reason>:<site>" or "rejected:<reason>:<site>".
        self._counts: Counter[tuple[int, str]] = Counter()
        # The accepted events' counts by (day, site), kept apart: counted per event.
        self._accepted: Counter[tuple[int, str]] = Counter()
        self._flusher: asyncio.Task[None] | None = None
        # Built where the loop runs (the app's lifespan). Looked up once: on Python 3.11
        # every asyncio.get_running_loop() makes a getpid() system call.
        self._loop = asyncio.get_running_loop()

    def append(self, events: list[dict[str, Any]]) -> asyncio.Future[None]:
        """Queue events for the next write; the future is done once Redis has all of
        them, or fails with StreamUnavailable. (A plain function returning the future, not
        a coroutine: one frame less to suspend and resume on every request.)"""
        future: asyncio.Future[None] = self._loop.create_future()
        accepted = self._accepted
        for event in events:
            accepted[event["timestamp"] // MICROS_PER_DAY, event["site_id"]] += 1
        self._pending.append((list(map(orjson.dumps, events)), future))
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush_while_pending())
        return future

    def count_ignored(self, events: list[dict[str, Any]], reason: str) -> None:
        """Count events ignored at the edge (a reason holds no colon), by their own day."""
        counts, named = self._counts, self._named_today(time.time_ns() // 1000 // MICROS_PER_DAY)
        for event in events:
            day = event["timestamp"] // MICROS_PER_DAY
            counts[day, f"ignored:{reason}:{named(event['site_id'])}"] += 1
        self.metrics.events_ignored[reason] += len(events)
        self._start_flush()

    def count_rejected(self, rejections: list[tuple[str | None, str]]) -> None:
        """Count invalid events, (site_id or None where it was not valid, the field at
        fault): by the day they arrived, as their own time may be what was wrong."""
        today = time.time_ns() // 1000 // MICROS_PER_DAY
        named = self._named_today(today)
        for site, field in rejections:
            self._counts[today, f"rejected:{field}:{named(site) if site else ''}"] += 1
        self.metrics.events_rejected += len(rejections)
        self._start_flush()

    def _named_today(self, today: int) -> Callable[[str], str]:
        """How ignored and rejected counts name a site today (see NAMED_SITES_PER_DAY)."""
        day, named = self._named_sites
        if day != today:
            named = set()
            self._named_sites = (today, named)

        def name(site: str) -> str:
            if site in named:
                return site
            if len(named) < NAMED_SITES_PER_DAY:
                named.add(site)
                return site
            return OTHER_SITES

        return name

    def _start_flush(self) -> None:
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush_while_pending())

    def _day_key(self, day: int) -> str:
        key = self._day_keys.get(day)
        if key is None:
            if len(self._day_keys) > 1000:
                self._day_keys.clear()
            key = self._day_keys[day] = self._ledger_key_prefix + utc_date(day).isoformat()
        return key

    async def aclose(self) -> None:
        """Wait for events already handed over to be written (or failed), then disconnect."""
        if self._flusher is not None:
            await self._flusher
        self._pipe.close()

    async def _flush_while_pending(self) -> None:
        try:
            while self._pending or self._counts:
                batch, self._pending = self._pending, []
                counts, self._counts = self._counts, Counter()
                for (day, site), n in self._accepted.items():
                    counts[day, "accepted:" + site] += n
                self._accepted = Counter()
                await self._flush(batch, counts)
        finally:
            self._flusher = None

    async def _flush(self, batch: list[_Waiter], counts: Counter[tuple[int, str]]) -> None:
        prefix = self._xadd_prefix
        commands = [_MULTI]
        for payloads, _ in batch:
            commands += [b"%s$%d\r\n%s\r\n" % (prefix, len(p), p) for p in payloads]
        events = len(commands) - 1
        keys = set()
        for (day, field), count in counts.items():
            key = self._day_key(day)
            keys.add(key)
            commands.append(pack("HINCRBY", key, field, count))
        commands += [pack("EXPIRE", key, LEDGER_TTL_S) for key in keys]
        commands.append(_EXEC)
        metrics = self.metrics
        metrics.redis_writes += 1
        metrics.events_written += events
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await self._pipe.execute(commands)
        except (OSError, TimeoutError) as exc:
            # One transaction: Redis has all of these events and their counts or none,
            # and which is unknown.
            logger.warning("stream write of %d commands failed: %r", len(commands), exc)
            self._fail(batch, StreamUnavailable(repr(exc)))
            return
        executed = replies[-1]
        if not isinstance(executed, list):  # EXECABORT (a command refused: Redis full)
            logger.warning("Redis refused a write of %d events: %s", events, executed)
            self._fail(batch, StreamUnavailable(str(executed)))
            return
        if hiredis.ReplyError not in set(map(type, executed)):
            for _, future in batch:  # the common case, told in C
                if not future.done():  # done: cancelled, its client went away
                    future.set_result(None)
            return
        self._settle_each(batch, executed)

    @staticmethod
    def _fail(batch: list[_Waiter], error: StreamUnavailable) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    def _settle_each(self, batch: list[_Waiter], executed: list[Any]) -> None:
        """Each request's outcome from its XADDs' replies within the transaction's: an
        error there is a command that failed as it ran (the others ran: a transaction
        does not roll back). The XADDs' only such error is the key's type (WRONGTYPE),
        which fails every one of them alike."""
        position = 0
        refused: list[Any] = []
        for payloads, future in batch:
            errors = [r for r in executed[position : position + len(payloads)] if _is_error(r)]
            position += len(payloads)
            refused += errors
            if future.done():
                continue
            if errors:
                future.set_exception(StreamUnavailable(str(errors[0])))
            else:
                future.set_result(None)
        if refused:
            logger.warning("Redis refused %d events' writes: %s", len(refused), refused[0])


def _is_error(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError)
