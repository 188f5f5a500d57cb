"""The HTTP application: POST /event (ingest) and GET /stats (report) on one server."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TypedDict

import asyncpg
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.config import Settings
from common.migrate import prepare_database
from ingest.endpoints import BatchEndpoint, EventEndpoint
from ingest.redis_pipe import RedisPipe
from ingest.stream_writer import StreamWriter
from report.endpoints import stats

logger = logging.getLogger(__name__)


class State(TypedDict):
    stream_writer: StreamWriter
    db_pool: asyncpg.Pool


def redis_client(settings: Settings) -> redis.Redis:
    timeout_s = settings.redis_timeout_ms / 1000
    # No hidden retries: a request that cannot be confirmed in time gets a 503 instead.
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


async def health(request: Request) -> Response:
    """Liveness: the process answers HTTP (dependencies are reported by their own 503s)."""
    return Response(b'{"status":"ok"}', media_type="application/json")


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        await prepare_database(settings.database_url)
        client = redis_client(settings)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            logger.warning(
                "Redis is not reachable yet (%r); POST /event answers 503 until it is", exc
            )
        writer = StreamWriter(
            RedisPipe(settings.redis_url), settings.stream_key, settings.redis_timeout_ms / 1000
        )
        try:
            async with asyncpg.create_pool(
                settings.database_url, min_size=1, max_size=4, timeout=5, command_timeout=5
            ) as pool:
                yield {"stream_writer": writer, "db_pool": pool}
                await writer.aclose()
        finally:
            await client.aclose()

    return Starlette(
        routes=[
            Route("/event", EventEndpoint(settings.max_body_bytes), methods=["POST"]),
            Route(
                "/events",
                BatchEndpoint(settings.max_body_bytes, settings.max_batch_events),
                methods=["POST"],
            ),
            Route("/stats", stats, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
