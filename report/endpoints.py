"""GET /stats: the original response shape, with 400 for bad parameters and 503 while
the database cannot answer."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import TypeVar

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from common.constants import MAX_SITE_ID
from common.errors import error_body
from common.migrate import (
    SchemaNotCurrent,
    Stopped,
    database_unavailable,
    missing_migrations,
    retry_until_stopped,
)
from report.access import ReportingAccess
from report.cache import AnswerCache, request_key
from report.queries import daily_stats
from report.responses import OrjsonResponse, unavailable

logger = logging.getLogger(__name__)

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
POOL_CLOSE_DEADLINE_S = 5.0
T = TypeVar("T")


class StatsDatabase:
    """The pool GET /stats reads through, opened in the background with retries, so that
    the server starts and takes events while PostgreSQL is down: it needs the database
    for nothing else. Until the pool is open and the schema current, `pool` is None and
    GET /stats answers 503.

    It never migrates. The processor (which writes the tables) and `make migrate` do:
    several ingest processes applying DDL whenever PostgreSQL comes back would take
    locks on the processor's tables at a moment nobody chose, and one owner of the
    schema is easier to reason about than many.
    """

    def __init__(self, database_url: str):
        self._url = database_url
        self.pool: asyncpg.Pool | None = None
        self._stop = asyncio.Event()
        self._opener: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._opener = asyncio.create_task(self._open())

    async def aclose(self) -> None:
        self._stop.set()  # the opener returns at once, even from a connection attempt
        if self._opener is not None:
            await self._opener
        if self.pool is None:
            return
        try:
            async with asyncio.timeout(POOL_CLOSE_DEADLINE_S):
                await self.pool.close()  # waits for queries in flight
        except TimeoutError:
            logger.warning("stats pool did not close in %.0f s: terminated", POOL_CLOSE_DEADLINE_S)
            self.pool.terminate()

    async def _open(self) -> None:
        try:
            self.pool = await retry_until_stopped(
                "opening the database for GET /stats", self._url, self._open_current, self._stop
            )
        except Stopped:
            return
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Not a matter of waiting (a password refused, a missing privilege): say so
            # once; GET /stats stays unavailable until the server is restarted.
            logger.error("GET /stats cannot use the database: %r", exc)
            return
        logger.info("GET /stats is ready")

    async def _open_current(self) -> asyncpg.Pool:
        try:
            # min_size=0: connections are made for requests, and no background task of
            # asyncpg's keeps reconnecting (and logging a traceback) while PostgreSQL is down.
            pool = await asyncpg.create_pool(
                self._url, min_size=0, max_size=4, timeout=5, command_timeout=5
            )
        except asyncpg.InvalidCatalogNameError as exc:
            raise SchemaNotCurrent("the database does not exist yet") from exc
        ready = False
        try:
            missing = await missing_migrations(pool)
            if missing:
                raise SchemaNotCurrent(f"migrations not applied yet: {', '.join(missing)}")
            ready = True
            return pool
        finally:
            if not ready:
                pool.terminate()


async def read_database(
    request: Request, read: Callable[[asyncpg.Pool], Awaitable[T]]
) -> T | Response:
    """What `read` returns from the reporting pool, or the answer to give when the
    database cannot answer (503, or 500 for a query that failed on its own)."""
    pool = request.state.stats_db.pool
    if pool is None:
        return unavailable("the database is unavailable; retry later")
    try:
        return await read(pool)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if not database_unavailable(exc):
            logger.error("reporting query failed", exc_info=exc)
            body = error_body("internal_error", "the query failed; see the server's log")
            return OrjsonResponse(body, status_code=500)
        sqlstate = exc.sqlstate if isinstance(exc, asyncpg.PostgresError) else None
        logger.warning("reporting query failed, answering 503 (SQLSTATE %s): %r", sqlstate, exc)
        return unavailable("the database is unavailable; retry later")


def bad_request(field: str, message: str) -> OrjsonResponse:
    detail = [{"field": field, "message": message}]
    return OrjsonResponse(
        error_body("invalid_query", f"{field}: {message}", detail), status_code=400
    )


def valid_site(request: Request) -> str | Response:
    """The request's site_id, or the answer to a missing or impossible one."""
    site_id = request.query_params.get("site_id", "")
    if not site_id:
        return bad_request("site_id", "required")
    if len(site_id) > MAX_SITE_ID or "\x00" in site_id:
        return bad_request("site_id", f"must be at most {MAX_SITE_ID} characters, without NUL")
    return site_id


def valid_day(request: Request) -> date | Response:
    """The request's date (today, UTC, where it names none), or the answer to a bad one."""
    raw_date = request.query_params.get("date")
    if raw_date is None:
        return datetime.now(UTC).date()
    try:
        if not _DATE.match(raw_date):
            raise ValueError
        return date.fromisoformat(raw_date)
    except ValueError:
        return bad_request("date", "must be a date as YYYY-MM-DD")


def readable_site_day(request: Request) -> tuple[str, date] | Response:
    """The site and day a request of our own routes asks about, checked, and the key's
    right to read it; else the answer to give."""
    site_id = valid_site(request)
    if isinstance(site_id, Response):
        return site_id
    day = valid_day(request)
    if isinstance(day, Response):
        return day
    access: ReportingAccess = request.state.reporting_access
    refusal = access.refusal(request, site_id)
    return (site_id, day) if refusal is None else refusal


async def stats(request: Request) -> Response:
    asked = readable_site_day(request)
    if isinstance(asked, Response):
        return asked
    site_id, day = asked

    async def compute() -> Response:
        result = await read_database(request, lambda pool: daily_stats(pool, site_id, day))
        if isinstance(result, Response):
            return result
        return OrjsonResponse(
            {
                "site_id": result.site_id,
                "date": result.date.isoformat(),
                "total_views": result.total_views,
                "unique_users": result.unique_users,
                "top_paths": [{"path": path, "views": views} for path, views in result.top_paths],
            }
        )

    cache: AnswerCache = request.state.answer_cache
    return await cache.answer(
        ("/stats", site_id, day), compute, request=request_key(request.scope), site_id=site_id
    )
