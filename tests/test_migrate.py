"""Migrations: applied once each, in order, safely from several processes at once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from common.migrate import apply_migrations, create_database_if_missing, migration_files
from tests.conftest import POSTGRES_URL, _drop_database


async def test_concurrent_starts_apply_each_migration_once() -> None:
    name = f"analytics_migrate_{uuid.uuid4().hex[:12]}"
    url = f"{POSTGRES_URL}/{name}"
    await create_database_if_missing(url)
    try:
        conns = [await asyncpg.connect(url) for _ in range(4)]
        try:
            results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        finally:
            for conn in conns:
                await conn.close()
        versions = [p.stem for p in migration_files()]
        # Exactly one of the four applied everything; the others found it done.
        assert sorted(results, key=len) == [[], [], [], versions]
        conn = await asyncpg.connect(url)
        try:
            recorded = [
                r["version"]
                for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            ]
            assert recorded == versions
            assert await apply_migrations(conn) == []
        finally:
            await conn.close()
    finally:
        await _drop_database(name)
