"""GET /readyz: whether this ingest process can take events and serve GET /stats now.

Liveness (GET /healthz, and GET /health as before) only says the process answers. A load
balancer or orchestrator routes traffic by readiness: Redis takes writes (a SET with a
short expiry, refused like an XADD when Redis is full), the processors are not so far
behind that events are refused (MAX_BACKLOG), PostgreSQL answers and its schema is the
one this code reads. A 503 names each check that failed.
"""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg

from common.constants import READY_PROBE_SUFFIX
from common.migrate import missing_migrations
from common.redis_clients import REDIS_FAILURES, AsyncRedis
from ingest.backlog import BacklogMonitor
from report.endpoints import StatsDatabase

CHECK_TIMEOUT_S = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class Readiness:
    client: AsyncRedis
    stream_key: str
    backlog: BacklogMonitor
    stats_db: StatsDatabase

    async def failures(self) -> dict[str, str]:
        """What is not ready, by check; empty when all is."""
        redis_failure, postgres_failure = await asyncio.gather(self._redis(), self._postgres())
        failed = {}
        if redis_failure:
            failed["redis"] = redis_failure
        elif self.backlog.exceeded:
            failed["backlog"] = "more events wait than MAX_BACKLOG: new ones are refused (503)"
        if postgres_failure:
            failed["postgres"] = postgres_failure
        return failed

    async def _redis(self) -> str | None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self.client.set(self.stream_key + READY_PROBE_SUFFIX, b"1", px=10_000)
        except (*REDIS_FAILURES, TimeoutError) as exc:
            return f"cannot write: {type(exc).__name__}: {exc}"
        return None

    async def _postgres(self) -> str | None:
        pool = self.stats_db.pool
        if pool is None:
            return "not connected yet, or its schema is not current (see the server's log)"
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                missing = await missing_migrations(pool)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            return f"not reachable: {type(exc).__name__}: {exc}"
        if missing:
            return f"migrations not applied: {', '.join(missing)} (run `make migrate`)"
        return None
