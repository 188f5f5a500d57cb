"""Apply the numbered SQL files in sql/ in order, once each, under an advisory lock.

Run as `python -m common.migrate`; the processor also runs it as it starts. The HTTP server
only reads, and waits until the schema is current (missing_migrations) before it does.

Also here: telling a database that is unavailable (worth a retry) from a request or code
that is wrong, and retrying the start-up steps until PostgreSQL is there or a stop comes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from common import constants
from common.config import redact_url, settings_or_exit
from common.logs import configure
from common.stopping import stopped_within

logger = logging.getLogger("common.migrate")  # also when run as __main__

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION_NAME = re.compile(r"^\d{3,}_[a-z0-9_]+\.sql$")

# SQLSTATE classes that say "not now" rather than "wrong": 08 connection exception, 53
# insufficient resources (too many connections, out of memory or disk), 57 operator
# intervention (shutting down, starting up, a query cancelled by statement_timeout).
UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0

T = TypeVar("T")


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


async def missing_migrations(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """The versions in sql/ that the database has not applied (all, before the first)."""
    try:
        rows = await conn.fetch(f"SELECT version FROM {constants.MIGRATIONS_TABLE}")
    except asyncpg.UndefinedTableError:
        rows = []
    done = {row["version"] for row in rows}
    return [path.stem for path in migration_files() if path.stem not in done]


class SchemaNotCurrent(Exception):
    """The database lacks tables this code reads: someone else has to migrate it first."""


class Stopped(Exception):
    """A stop was asked for while start-up waited for the database."""


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot serve now (retry later), rather than that
    the query, the data or the code is wrong."""
    if isinstance(exc, asyncpg.PostgresError):
        # By class, not by a list of exception types: every code of the class counts,
        # including those asyncpg has no class of its own for.
        return str(exc.sqlstate)[:2] in UNAVAILABLE_SQLSTATE_CLASSES
    # asyncpg's plain InterfaceError is a connection or pool that is closed or closing;
    # its subclasses (DataError, ClientConfigurationError, ...) are bugs or configuration.
    return isinstance(exc, OSError | TimeoutError) or type(exc) is asyncpg.InterfaceError


async def retry_until_stopped(
    what: str,
    database_url: str,
    attempt: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    *,
    max_backoff_s: float = MAX_BACKOFF_S,
    on_failure: Callable[[Exception], None] | None = None,
) -> T:
    """`attempt()` again while the database is unavailable or its schema not current:
    capped exponential backoff with jitter, one WARNING per failed attempt saying why.
    Raises Stopped as soon as `stop` is set, even in the middle of an attempt; any other
    error propagates at once. `on_failure` hears of each failed attempt too."""
    failures = 0
    while not stop.is_set():
        try:
            return await _unless_stopped(what, attempt, stop)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not database_unavailable(exc):
                raise
            error: Exception = exc
        except SchemaNotCurrent as exc:
            error = exc
        failures += 1
        if on_failure is not None:
            on_failure(error)
        # Jittered, so that many processes started together do not retry in step.
        delay = min(max_backoff_s, FIRST_BACKOFF_S * 2**failures) * random.uniform(0.5, 1.0)
        logger.warning(
            "%s at %s failed (attempt %d, retrying in %.1f s): %r",
            what,
            redact_url(database_url),
            failures,
            delay,
            error,
        )
        if await stopped_within(stop, delay):
            break
    raise Stopped(what)


async def _unless_stopped(what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
    """The attempt's result, or Stopped when `stop` comes first (the attempt is cancelled:
    a connection can take a minute to time out)."""
    task = asyncio.ensure_future(attempt())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise Stopped(what)
    return task.result()  # done first, or finished although cancelled: use it


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
    # The same URL (host, user, query options such as sslmode or a password) on the
    # server's maintenance database.
    parts = urlsplit(database_url)
    name = unquote(parts.path.lstrip("/"))
    conn = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        logger.info("created database %s", name)
    except asyncpg.DuplicateDatabaseError:
        pass  # another process created it in the meantime
    finally:
        await conn.close()


class DatabaseUnfit(Exception):
    """The database is reachable but cannot hold our data as it is: an operator's to fix."""


async def prepare_database(database_url: str) -> list[str]:
    await create_database_if_missing(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await check_encoding(conn)
        return await apply_migrations(conn)
    finally:
        await conn.close()


async def check_encoding(conn: asyncpg.Connection) -> None:
    """Text must be stored as UTF-8: the edge's byte limits, which make every accepted
    event storable, count UTF-8 bytes, and another encoding may not hold a character
    at all (LATIN1 has no CJK)."""
    encoding = await conn.fetchval("SHOW server_encoding")
    if encoding != "UTF8":
        name = await conn.fetchval("SELECT current_database()")
        raise DatabaseUnfit(
            f"database {name} is encoded in {encoding}, not UTF8: create it with "
            f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
        )


def main() -> int:
    settings = settings_or_exit()
    configure(settings.log_level, settings.log_format)
    try:
        applied = asyncio.run(prepare_database(settings.database_url))
    except (OSError, asyncpg.PostgresError, DatabaseUnfit) as exc:
        logger.error("cannot migrate %s: %s", redact_url(settings.database_url), exc)
        return 1
    logger.info("database is up to date (%d migrations applied now)", len(applied))
    return 0


if __name__ == "__main__":
    sys.exit(main())
