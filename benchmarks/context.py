"""What every benchmark step shares: settings of its own, pinned cores, helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import redis

from common.config import Settings
from common.constants import WRITTEN_TABLES

T = TypeVar("T")


@dataclasses.dataclass
class BenchContext:
    settings: Settings
    service_cpu: int | None
    load_cpu: int | None
    rounds: int
    seconds: int
    log_dir: Path
    redis: redis.Redis

    def env(self, **overrides: object) -> dict[str, str]:
        """Environment for a service process started with these settings."""
        env = dict(os.environ)
        for field in dataclasses.fields(self.settings):
            env[field.name.upper()] = str(getattr(self.settings, field.name))
        env["LOG_LEVEL"] = "WARNING"
        for name, value in overrides.items():
            env[name.upper()] = str(value)
        return env

    def with_db(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def run() -> T:
            conn = await asyncpg.connect(self.settings.database_url)
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(run())

    def reset(self) -> None:
        """Empty the stream and the tables between rounds."""
        self.redis.delete(self.settings.stream_key, self.settings.dead_letter_key)
        self.empty_tables()

    def empty_tables(self) -> None:
        async def truncate(conn: asyncpg.Connection) -> None:
            await conn.execute(f"TRUNCATE {', '.join(WRITTEN_TABLES)}")

        self.with_db(truncate)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": median(values), "runs": values}


async def drop_database(server_url: str, database: str) -> None:
    """Drop a database a run made, on its server's maintenance database."""
    conn = await asyncpg.connect(f"{server_url}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
