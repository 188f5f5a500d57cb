"""What a processor is failing at, told by its log and by `GET /health` on HEALTH_PORT.

A processor that cannot store (PostgreSQL down, a partition that cannot be made) or
read (Redis down) keeps its entries pending and retries: from outside it looks idle.
The health answer says which operation fails, since when and why: 200 while nothing
does, 503 otherwise, so that an orchestrator or an operator sees it without the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import orjson

logger = logging.getLogger(__name__)

_REQUEST_TIMEOUT_S = 2.0
_MAX_REQUEST_HEAD = 8192


@dataclasses.dataclass
class Failure:
    since: float  # Unix time of the first failure in this run of failures
    attempts: int
    error: str


class Health:
    """Shared by the consumers of one process; each failing operation under its name."""

    def __init__(self) -> None:
        self._failing: dict[str, Failure] = {}

    def failed(self, operation: str, error: BaseException) -> None:
        failure = self._failing.get(operation)
        if failure is None:
            self._failing[operation] = Failure(time.time(), 1, repr(error))
        else:
            failure.attempts += 1
            failure.error = repr(error)

    def recovered(self, operation: str) -> None:
        self._failing.pop(operation, None)

    def answer(self) -> tuple[int, bytes]:
        """The HTTP status and JSON body of GET /health."""
        if not self._failing:
            return 200, b'{"status":"ok"}'
        failing = [
            {"operation": name, **dataclasses.asdict(failure)}
            for name, failure in sorted(self._failing.items())
        ]
        return 503, orjson.dumps({"status": "failing", "failing": failing})


@contextlib.asynccontextmanager
async def health_server(health: Health, host: str, port: int) -> AsyncIterator[None]:
    """Serve GET /health on host:port while the block runs (port 0: not at all)."""
    if not port:
        yield
        return

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):  # a slow client gets nothing
                head = await reader.readuntil(b"\r\n\r\n")
            method, path, _ = head[: head.index(b"\r\n")].split(b" ", 2)
            if method != b"GET":
                status, body = 405, b'{"error":"method_not_allowed"}'
            elif path.split(b"?", 1)[0] == b"/health":
                status, body = health.answer()
            else:
                status, body = 404, b'{"error":"not_found"}'
            writer.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
            )
            await writer.drain()
        except (
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass  # not a request we can answer: just close
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port, limit=_MAX_REQUEST_HEAD)
    logger.info("health on http://%s:%d/health", host, port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


_REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 503: b"Service Unavailable"}
