"""Apply the numbered SQL files in sql/ in order, once each, under an advisory lock.

Run as `python -m common.migrate`; the server and the processor also run it as they start.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path

import asyncpg

from common import constants
from common.config import redact_url, settings_or_exit
from common.logs import configure

logger = logging.getLogger("common.migrate")  # also when run as __main__

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION_NAME = re.compile(r"^\d{3,}_[a-z0-9_]+\.sql$")


def migration_files(directory: Path = SQL_DIR) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if _MIGRATION_NAME.match(p.name))
    if not files:
        raise RuntimeError(f"no migrations found in {directory}")
    return files


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; returns the versions applied now. Safe to run concurrently."""
    applied_now: list[str] = []
    # A session-level lock: a second process waits here until the first has finished.
    await conn.execute("SELECT pg_advisory_lock($1)", constants.MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {constants.MIGRATIONS_TABLE} ("
            " version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(f"SELECT version FROM {constants.MIGRATIONS_TABLE}")
        done = {row["version"] for row in rows}
        for path in migration_files():
            version = path.stem
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    f"INSERT INTO {constants.MIGRATIONS_TABLE} (version) VALUES ($1)", version
                )
            logger.info("applied migration %s", version)
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", constants.MIGRATION_LOCK_KEY)
    return applied_now


async def create_database_if_missing(database_url: str) -> None:
    """Create the database named in the URL when the server has none of that name.

    Convenient on a developer's machine; where the database exists this only connects once.
    """
    try:
        conn = await asyncpg.connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return
    name = database_url.rsplit("/", 1)[1].split("?", 1)[0]
    maintenance_url = database_url.rsplit("/", 1)[0] + "/postgres"
    conn = await asyncpg.connect(maintenance_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        logger.info("created database %s", name)
    except asyncpg.DuplicateDatabaseError:
        pass  # another process created it in the meantime
    finally:
        await conn.close()


async def prepare_database(database_url: str) -> list[str]:
    await create_database_if_missing(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


def main() -> int:
    settings = settings_or_exit()
    configure(settings.log_level)
    try:
        applied = asyncio.run(prepare_database(settings.database_url))
    except (OSError, asyncpg.PostgresError) as exc:
        logger.error("cannot migrate %s: %s", redact_url(settings.database_url), exc)
        return 1
    logger.info("database is up to date (%d migrations applied now)", len(applied))
    return 0


if __name__ == "__main__":
    sys.exit(main())
