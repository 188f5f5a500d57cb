"""Appends events to the Redis stream, coalescing concurrent requests into pipelines.

Each request hands its encoded event to `append` and awaits its own result. One flush is
in flight at a time; events that arrive meanwhile accumulate and go out together in the
next pipeline, so a busy server makes one Redis round trip per few dozen requests, and an
idle one sends each event at once without waiting on a timer.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis
from redis.exceptions import RedisError

from common.constants import EVENT_FIELD

logger = logging.getLogger(__name__)


class StreamUnavailable(Exception):
    """Redis did not confirm the event within the time limit: it may not be stored."""


class StreamWriter:
    def __init__(self, client: redis.Redis, stream_key: str, timeout_s: float):
        self._client = client
        self._stream_key = stream_key
        self._timeout_s = timeout_s
        self._pending: list[tuple[bytes, asyncio.Future[bytes]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, payload: bytes) -> bytes:
        """Append one encoded event; returns its stream entry id once Redis has it."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append((payload, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_while_pending())
        return await future

    async def aclose(self) -> None:
        """Wait for events already handed over to be written (or failed)."""
        if self._flusher is not None:
            await self._flusher

    async def _flush_while_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._flush(batch)
        finally:
            self._flusher = None

    async def _flush(self, batch: list[tuple[bytes, asyncio.Future[bytes]]]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                pipe = self._client.pipeline(transaction=False)
                for payload, _ in batch:
                    pipe.xadd(self._stream_key, {EVENT_FIELD: payload})
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("stream write of %d events failed: %r", len(batch), exc)
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the request was cancelled: its client went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(StreamUnavailable(str(result)))
            else:
                future.set_result(result)
