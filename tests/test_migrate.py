"""Migrations: applied once each, in order, safely from several processes at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from urllib.parse import quote

import asyncpg
import pytest

from common.migrate import (
    DatabaseUnfit,
    apply_migrations,
    create_database_if_missing,
    migration_files,
    prepare_database,
)
from tests.conftest import POSTGRES_URL, ROOT, _drop_database


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


async def test_event_ids_are_keyed_by_site_after_migration_004() -> None:
    name = f"analytics_migrate_{uuid.uuid4().hex[:12]}"
    url = f"{POSTGRES_URL}/{name}"
    await create_database_if_missing(url)
    try:
        conn = await asyncpg.connect(url)
        try:
            # The schema as it stood before 004, holding an event stored then.
            await conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
            for path in migration_files():
                if path.stem < "004":
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1)", path.stem)
            event_id = uuid.uuid4()
            await conn.execute("SELECT ensure_events_partition('2024-05-01')")
            await conn.execute(
                'INSERT INTO events (event_id, site_id, event_type, path, "timestamp",'
                " received_at) VALUES ($1, 'shop', 'page_view', '/', '2024-05-06', now())",
                event_id,
            )
            await conn.execute("INSERT INTO event_ids VALUES ($1, '2024-05-06')", event_id)

            assert [v for v in await apply_migrations(conn) if v.startswith("004")]

            rows = await conn.fetch("SELECT event_id, site_id FROM event_ids")
            assert [tuple(r) for r in rows] == [(event_id, "shop")]
            # The same id on another site is a new key; on the same site a conflict.
            insert = "INSERT INTO event_ids VALUES ($1, '2024-05-06', $2) ON CONFLICT DO NOTHING"
            assert await conn.execute(insert, event_id, "blog") == "INSERT 0 1"
            assert await conn.execute(insert, event_id, "shop") == "INSERT 0 0"
        finally:
            await conn.close()
    finally:
        await _drop_database(name)


async def test_a_missing_database_is_created_whatever_options_its_url_carries() -> None:
    # Query options are kept for the maintenance connection, and a "/" inside one does
    # not move where the database name is read from; the name is percent-decoded.
    name = f"analytics migrate {uuid.uuid4().hex[:8]}"
    url = f"{POSTGRES_URL}/{quote(name)}?application_name=tests/migrate"
    await create_database_if_missing(url)
    try:
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
            assert await conn.fetchval("SHOW application_name") == "tests/migrate"
        finally:
            await conn.close()
    finally:
        await _drop_database(name)


async def test_a_database_not_in_utf8_is_refused_at_start_naming_the_fix() -> None:
    name = f"analytics_ascii_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
    try:
        await admin.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0")
    finally:
        await admin.close()
    try:
        url = f"{POSTGRES_URL}/{name}"
        with pytest.raises(DatabaseUnfit, match="SQL_ASCII, not UTF8"):
            await prepare_database(url)
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": "redis://127.0.0.1:1/0"}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "processor"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1
        assert "ENCODING 'UTF8'" in done.stderr and "Traceback" not in done.stderr
    finally:
        await _drop_database(name)
