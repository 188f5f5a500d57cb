"""The consumer group's backlog, read in the background and shared by all requests.

Backpressure instead of loss: while more events wait than MAX_BACKLOG, the ingest routes
answer 503 with Retry-After, and the stream is never trimmed of unprocessed entries.
The figure is read at most every 100 ms, never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import ResponseError

from common.redis_clients import REDIS_FAILURES, AsyncRedis

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1


class BacklogMonitor:
    def __init__(self, client: AsyncRedis, stream_keys: list[str], group: str, limit: int):
        """`stream_keys`: every shard's stream (common/shards.py), summed; one without shards."""
        self._client = client
        self._stream_keys = stream_keys
        self._group = group
        self._limit = limit
        self.backlog = 0
        # Read by every request: a plain attribute, kept in step with `backlog` by the poll.
        self.exceeded = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll_until_stopped())

    async def stop(self) -> None:
        """Ends the poll within one read. The cancellation makes it prompt, the flag makes
        it certain: redis-py sends each command under asyncio.wait_for, which on Python
        3.11 loses a cancellation that arrives as the command completes, and the poll
        would then go on for ever, and the server with it."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def read(self) -> int:
        """Entries not yet processed: pending (delivered, unacknowledged) plus lag
        (undelivered), over every shard."""
        return sum([await self._read_one(key) for key in self._stream_keys])

    async def _read_one(self, stream_key: str) -> int:
        try:
            groups = await self._client.xinfo_groups(stream_key)
        except ResponseError:  # no such stream yet
            return 0
        for group in groups:
            if group["name"].decode() == self._group:
                lag = group.get("lag")
                if lag is None:  # Redis cannot tell after some deletions: count it all
                    return int(await self._client.xlen(stream_key))
                return int(group["pending"]) + int(lag)
        # No processor has created the group yet: everything in the stream waits.
        return int(await self._client.xlen(stream_key))

    async def _poll_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        was_exceeded = False
        while not self._stopping.is_set():
            try:
                self.backlog = await self.read()
            except REDIS_FAILURES as exc:
                logger.debug("backlog read failed: %r", exc)  # writes will report Redis down
            self.exceeded = self.backlog > self._limit
            if self.exceeded != was_exceeded:
                was_exceeded = self.exceeded
                logger.warning(
                    "backlog %d %s the limit %d: %s",
                    self.backlog,
                    "exceeds" if was_exceeded else "is back under",
                    self._limit,
                    "answering 503" if was_exceeded else "accepting again",
                )
            next_poll += POLL_INTERVAL_S  # on a schedule that does not drift
            with contextlib.suppress(TimeoutError):  # the time to poll again
                async with asyncio.timeout(max(0.0, next_poll - loop.time())):
                    await self._stopping.wait()
