"""GET /api/v1/export/events: a site's raw events of a range of days, as NDJSON (the
default) or CSV (`format=csv` or `Accept: text/csv`), streamed straight from PostgreSQL.

PostgreSQL writes the rows itself (COPY ... TO STDOUT); each chunk goes to the client
before the next is read (a queue of a few chunks between the two), so the server's
memory does not grow with the range, however large. A client that reads slowly slows
the COPY; one that goes away ends it. At most EXPORTS_AT_ONCE run at a time per server
process (each holds a connection of the reporting pool): more are answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import date

import asyncpg
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from report.query import QueryError, parse_period
from report.responses import asks_for_csv, attachment, unavailable
from report.stats_api import api_error, refusal_or_time_zone

logger = logging.getLogger(__name__)

EXPORTS_AT_ONCE = 2
EXPORT_TIMEOUT_S = 3600.0
_QUEUED_CHUNKS = 4
# Every column but the client's address and User-Agent (kept only with
# STORE_CLIENT_INFO, and personal data): an export is for analysis.
COLUMNS = (
    "event_id", "site_id", "event_type", "path", "user_id", "timestamp", "received_at",
    "visitor_id", "hostname", "referrer", "source", "utm_source", "utm_medium",
    "utm_campaign", "utm_content", "utm_term", "click_id", "browser", "browser_version",
    "os", "os_version", "device", "screen_width", "country", "props", "interactive",
)  # fmt: skip
_SELECT = ", ".join(f'"{column}"' for column in COLUMNS)
# $1 site, $2 time zone, $3 and $4 the first and last local day; in time order.
_ROWS = f"""
SELECT {_SELECT} FROM events
WHERE site_id = $1
    AND "timestamp" >= $3::date::timestamp AT TIME ZONE $2
    AND "timestamp" < ($4::date + 1)::timestamp AT TIME ZONE $2
ORDER BY "timestamp", event_id
"""
# NDJSON: one JSON object a line, as PostgreSQL writes it. COPY's text format would
# escape the backslashes of the JSON; its CSV format with a quote and a delimiter that
# JSON text never holds raw (control characters are escaped in it) writes it unchanged.
_NDJSON = f"SELECT row_to_json(r)::text FROM ({_ROWS}) AS r"
_CSV_OPTIONS: dict[str, object] = {"format": "csv", "header": True}
_NDJSON_OPTIONS: dict[str, object] = {"format": "csv", "quote": "\x01", "delimiter": "\x02"}


async def export_events(request: Request) -> Response:
    params = request.query_params
    checked = refusal_or_time_zone(request)
    if isinstance(checked, Response):
        return checked
    site_id, time_zone = checked
    first_text, last_text = params.get("from"), params.get("to")
    if not first_text or not last_text:
        message = "Give the range as from=YYYY-MM-DD&to=YYYY-MM-DD."
        return api_error(400, message, "missing_range", "from")
    try:
        period = parse_period("custom", f"{first_text},{last_text}", date.today())
    except QueryError as error:
        return api_error(400, error.message, error.code, "from")
    csv = asks_for_csv(request)
    if params.get("format") not in (None, "csv", "ndjson"):
        message = "format is ndjson (the default) or csv."
        return api_error(400, message, "invalid_format", "format")
    pool: asyncpg.Pool | None = request.state.stats_db.pool
    if pool is None:
        return unavailable("the database is unavailable; retry later")
    slots: asyncio.Semaphore = request.state.export_slots
    if slots.locked():
        return unavailable(f"{EXPORTS_AT_ONCE} exports are running; retry later")
    query = _ROWS if csv else _NDJSON
    args = (site_id, time_zone, period.first, period.last)
    options = _CSV_OPTIONS if csv else _NDJSON_OPTIONS
    name = f"{site_id}-{period.first}-{period.last}.{'csv' if csv else 'ndjson'}"
    return StreamingResponse(
        _stream(pool, slots, query, args, options),
        media_type="text/csv; charset=utf-8" if csv else "application/x-ndjson",
        headers=attachment(name),
    )


async def _stream(
    pool: asyncpg.Pool,
    slots: asyncio.Semaphore,
    query: str,
    args: tuple[object, ...],
    options: dict[str, object],
) -> AsyncIterator[bytes]:
    async with slots, pool.acquire() as conn:
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUED_CHUNKS)

        async def put(chunk: bytearray) -> None:
            await chunks.put(bytes(chunk))  # asyncpg reuses nothing, but ASGI wants bytes

        async def copy() -> None:
            try:
                await conn.copy_from_query(
                    query, *args, output=put, timeout=EXPORT_TIMEOUT_S, **options
                )
            finally:
                await chunks.put(None)

        task = asyncio.create_task(copy())
        try:
            while (chunk := await chunks.get()) is not None:
                yield chunk
            await task
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # Raised on: the server drops the connection, so that the client sees the
            # export fail rather than a short file that looks whole.
            logger.warning("an export failed mid-way: %r", exc)
            raise
        finally:
            if not task.done():  # the client went away: stop the COPY
                task.cancel()
                with contextlib.suppress(
                    asyncio.CancelledError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError
                ):
                    await task
