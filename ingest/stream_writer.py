"""Appends events to the Redis stream, coalescing concurrent requests into one write.

Each request hands its encoded events to `append` and awaits its own result. One flush
is in flight at a time; events that arrive meanwhile accumulate and go out together in
the next write, so a busy server makes one Redis round trip per few dozen requests, and
an idle one sends each event at once without waiting on a timer.

One request's events are written all or nothing: a single event is one XADD, several
are one MULTI/EXEC block, so that a write that fails half way (Redis full, the
connection lost) leaves none of that request's events behind for its retry to repeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import hiredis

from common.constants import EVENT_FIELD
from ingest.metrics import IngestMetrics
from ingest.redis_pipe import RedisPipe, pack

logger = logging.getLogger(__name__)

_Waiter = tuple[list[bytes], asyncio.Future[None]]

IGNORED_TTL_S = 90 * 86_400

_MULTI = pack("MULTI")
_EXEC = pack("EXEC")


class StreamUnavailable(Exception):
    """Redis did not confirm the events within the time limit: they may not be stored."""


class StreamWriter:
    def __init__(
        self,
        pipe: RedisPipe,
        stream_key: str,
        ignored_key_prefix: str,
        timeout_s: float,
        metrics: IngestMetrics | None = None,
    ):
        self._pipe = pipe
        self.metrics = IngestMetrics() if metrics is None else metrics
        # Every XADD differs only in its last argument: pack the rest once (RESP framing).
        self._xadd_prefix = pack("XADD", stream_key, "*", EVENT_FIELD, b"")[: -len(b"$0\r\n\r\n")]
        self._ignored_key_prefix = ignored_key_prefix
        self._timeout_s = timeout_s
        self._pending: list[_Waiter] = []
        self._ignored: Counter[tuple[str, str]] = Counter()
        self._flusher: asyncio.Task[None] | None = None
        # Built where the loop runs (the app's lifespan). Looked up once: on Python 3.11
        # every asyncio.get_running_loop() makes a getpid() system call.
        self._loop = asyncio.get_running_loop()

    def append(self, payloads: list[bytes]) -> asyncio.Future[None]:
        """Queue encoded events for the next write; the future is done once Redis has all of
        them, or fails with StreamUnavailable. (A plain function returning the future, not
        a coroutine: one frame less to suspend and resume on every request.)"""
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending.append((payloads, future))
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush_while_pending())
        return future

    def count_ignored(self, site_ids: list[str], reason: str) -> None:
        """Count events ignored at the edge, in the day's hash under "<reason>:<site_id>"
        (a reason holds no colon); sent with the next write, best effort."""
        key = self._ignored_key_prefix + datetime.fromtimestamp(time.time(), UTC).date().isoformat()
        self._ignored.update((key, f"{reason}:{site}") for site in site_ids)
        self.metrics.events_ignored[reason] += len(site_ids)
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush_while_pending())

    async def aclose(self) -> None:
        """Wait for events already handed over to be written (or failed), then disconnect."""
        if self._flusher is not None:
            await self._flusher
        self._pipe.close()

    async def _flush_while_pending(self) -> None:
        try:
            while self._pending or self._ignored:
                batch, self._pending = self._pending, []
                ignored, self._ignored = self._ignored, Counter()
                await self._flush(batch, ignored)
        finally:
            self._flusher = None

    async def _flush(self, batch: list[_Waiter], ignored: Counter[tuple[str, str]]) -> None:
        prefix = self._xadd_prefix
        commands: list[bytes] = []
        transactions = 0
        for payloads, _ in batch:
            if len(payloads) == 1:
                payload = payloads[0]
                commands.append(b"%s$%d\r\n%s\r\n" % (prefix, len(payload), payload))
            else:
                transactions += 1
                commands.append(_MULTI)
                commands.extend(b"%s$%d\r\n%s\r\n" % (prefix, len(p), p) for p in payloads)
                commands.append(_EXEC)
        metrics = self.metrics
        metrics.redis_writes += 1
        # An XADD an event, and a MULTI and an EXEC around each request of several.
        metrics.events_written += len(commands) - 2 * transactions
        for (key, site), count in ignored.items():  # after the XADDs: replies stay aligned
            commands.append(pack("HINCRBY", key, site, count))
            commands.append(pack("EXPIRE", key, IGNORED_TTL_S))
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await self._pipe.execute(commands)
        except (OSError, TimeoutError) as exc:
            # Each request's events were sent as one command or one MULTI/EXEC: Redis has
            # all of a request's events or none, and which is unknown.
            logger.warning("stream write of %d commands failed: %r", len(commands), exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(StreamUnavailable(repr(exc)))
            return
        if not transactions and hiredis.ReplyError not in set(map(type, replies)):
            for _, future in batch:  # the common case, told in C
                if not future.done():  # done: cancelled, its client went away
                    future.set_result(None)
            return
        self._settle_each(batch, replies)

    def _settle_each(self, batch: list[_Waiter], replies: list[Any]) -> None:
        """Each request's outcome from its own replies: its XADD's, or its EXEC's (a list
        of the XADDs' replies, or an error when Redis refused the transaction)."""
        position = 0
        refused: list[Any] = []
        for payloads, future in batch:
            if len(payloads) == 1:
                outcome = replies[position]
                position += 1
            else:
                position += len(payloads) + 2  # MULTI, the XADDs (QUEUED), EXEC
                outcome = replies[position - 1]
            errors = _errors(outcome)
            refused += errors
            if future.done():
                continue
            if errors:
                future.set_exception(StreamUnavailable(str(errors[0])))
            else:
                future.set_result(None)
        if refused:
            logger.warning("Redis refused %d requests' writes: %s", len(refused), refused[0])


def _errors(reply: Any) -> list[hiredis.ReplyError]:
    """The error replies in a reply: itself, or inside an EXEC's list."""
    if isinstance(reply, hiredis.ReplyError):
        return [reply]
    if isinstance(reply, list):
        return [r for r in reply if isinstance(r, hiredis.ReplyError)]
    return []
