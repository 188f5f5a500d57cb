"""GET /stats: the original response shape, with 400 for bad parameters."""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from common.constants import MAX_SITE_ID
from common.errors import error_body
from report.queries import daily_stats

logger = logging.getLogger(__name__)

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class OrjsonResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def _bad_request(field: str, message: str) -> OrjsonResponse:
    detail = [{"field": field, "message": message}]
    return OrjsonResponse(
        error_body("invalid_query", f"{field}: {message}", detail), status_code=400
    )


async def stats(request: Request) -> OrjsonResponse:
    site_id = request.query_params.get("site_id", "")
    if not site_id:
        return _bad_request("site_id", "required")
    if len(site_id) > MAX_SITE_ID or "\x00" in site_id:
        return _bad_request("site_id", f"must be at most {MAX_SITE_ID} characters, without NUL")
    raw_date = request.query_params.get("date")
    if raw_date is None:
        day = datetime.now(UTC).date()
    else:
        try:
            if not _DATE.match(raw_date):
                raise ValueError
            day = date.fromisoformat(raw_date)
        except ValueError:
            return _bad_request("date", "must be a date as YYYY-MM-DD")

    pool: asyncpg.Pool = request.state.db_pool
    try:
        result = await daily_stats(pool, site_id, day)
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        logger.warning("stats query failed: %r", exc)
        body = error_body("unavailable", "the database is unavailable; retry later")
        return OrjsonResponse(body, status_code=503, headers={"retry-after": "1"})
    return OrjsonResponse(
        {
            "site_id": result.site_id,
            "date": result.date.isoformat(),
            "total_views": result.total_views,
            "unique_users": result.unique_users,
            "top_paths": [{"path": path, "views": views} for path, views in result.top_paths],
        }
    )
