"""Plausible's Stats API v1: GET /api/v1/stats/aggregate, /timeseries and /breakdown.

Thin: the request is parsed into a query (report/query.py), planned and read
(report/planner.py), and shaped as Plausible shapes it. Errors are Plausible's
`{"error": message}`, with the parameter at fault (`field`) and a `code` beside it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from common.constants import MAX_SITE_ID
from report import planner
from report.access import KEY_REQUIRED, Refusal, ReportingAccess
from report.cache import AnswerCache, request_key
from report.endpoints import read_database
from report.query import Query, QueryError, parse
from report.responses import OrjsonResponse, asks_for_csv, csv_response

_MISSING_SITE = "Missing site ID. Please provide the required site_id parameter with your request."
_MISSING_KEY = "Missing API key. Please use a valid Plausible API key as a Bearer Token."
_INVALID_KEY = (
    "Invalid API key or site ID. Please make sure you're using a valid API key "
    "with access to the site you've requested."
)


def api_error(
    status: int, message: str, code: str, field: str | None = None, **headers: str
) -> Response:
    """An error as the Stats API words them: Plausible's message, our code and field."""
    body: dict[str, Any] = {"error": message, "code": code}
    if field is not None:
        body["field"] = field
    return OrjsonResponse(body, status_code=status, headers=headers or None)


def refusal_or_time_zone(request: Request) -> Response | tuple[str, str]:
    """The site asked for and its time zone; or the answer when it may not be read."""
    site_id = request.query_params.get("site_id", "")
    if not site_id:
        return api_error(400, _MISSING_SITE, "missing_site_id", "site_id")
    if len(site_id) > MAX_SITE_ID or "\x00" in site_id:
        return api_error(400, _INVALID_KEY, "invalid_site_id", "site_id")
    access: ReportingAccess = request.state.reporting_access
    refused = access.check(request, site_id)
    if refused is None:
        return site_id, access.time_zone(site_id)
    return api_refusal(access, refused)


def api_refusal(access: ReportingAccess, refused: Refusal) -> Response:
    """A refusal in Plausible's words."""
    if refused.code == "unavailable":
        return refused.response()
    if refused.status == 429:
        message = (
            "Too many API requests. Your API key is limited to "
            f"{access.requests_per_minute} requests per minute."
        )
        return api_error(429, message, refused.code, "authorization", **refused.headers)
    message = _MISSING_KEY if refused.message == KEY_REQUIRED else _INVALID_KEY
    return api_error(401, message, refused.code, "authorization", **refused.headers)


async def _answer(
    request: Request,
    endpoint: str,
    read: Callable[[asyncpg.Pool, Query, bool], Awaitable[dict[str, Any] | int]],
) -> Response:
    checked = refusal_or_time_zone(request)
    if isinstance(checked, Response):
        return checked
    site_id, time_zone = checked
    params = request.query_params
    try:
        query = parse(
            endpoint, params, site_id, time_zone, datetime.now(ZoneInfo(time_zone)).date()
        )
    except QueryError as error:
        return api_error(400, error.message, error.code, error.field)
    wants_csv = asks_for_csv(request)
    if params.get("format") not in (None, "json", "csv"):
        return api_error(400, "format is json (the default) or csv.", "invalid_format", "format")
    rollups: bool = request.state.rollups_have_visits

    async def compute() -> Response:
        result = await read_database(request, lambda pool: read(pool, query, rollups))
        if isinstance(result, Response):
            return result
        if wants_csv and endpoint in ("timeseries", "breakdown"):
            assert isinstance(result, dict)
            first = ["date"] if query.property is None else planner.result_columns(query.property)
            name = f"{site_id}-{endpoint}-{query.period.first}-{query.period.last}.csv"
            return csv_response([*first, *query.metrics], result["results"], name)
        return OrjsonResponse(result)

    # The same question (of the same site, asked the same way) has the same answer;
    # `today` is part of it: a period without a date moves at the site's midnight.
    key = (request.url.path, query, wants_csv)
    cache: AnswerCache = request.state.answer_cache
    return await cache.answer(key, compute, request=request_key(request.scope), site_id=site_id)


async def _aggregate(pool: asyncpg.Pool, query: Query, rollups: bool) -> dict[str, Any]:
    values = await planner.aggregate(pool, query, query.period, rollups=rollups)
    if not query.compare:
        return {"results": {metric: {"value": value} for metric, value in values.items()}}
    before = await planner.aggregate(pool, query, query.period.previous(), rollups=rollups)
    return {
        "results": {
            metric: {
                "value": value,
                "change": change(metric, value, before[metric]),
                "comparison_value": before[metric],
            }
            for metric, value in values.items()
        }
    }


def change(metric: str, new: float | None, old: float | None) -> float | None:
    """Plausible's `change`: the bounce rate's in points (null from 0), every other
    metric's in whole per cent (100 from 0 to more, 0 from 0 to 0)."""
    if new is None or old is None:
        return None
    if metric == "bounce_rate":
        return None if old == 0 else new - old
    if old == 0:
        return 100 if new > 0 else 0
    return round((new - old) / old * 100)


async def _timeseries(pool: asyncpg.Pool, query: Query, rollups: bool) -> dict[str, Any]:
    return {"results": await planner.timeseries(pool, query, rollups=rollups)}


async def _breakdown(pool: asyncpg.Pool, query: Query, rollups: bool) -> dict[str, Any]:
    return {"results": await planner.breakdown(pool, query, rollups=rollups)}


# Plausible's current visitors: distinct visitors of the events of the last 5 minutes.
_REALTIME_VISITORS = """
SELECT count(DISTINCT visitor_key(user_id, visitor_id)) FROM events
WHERE site_id = $1 AND "timestamp" >= now() - interval '5 minutes'
"""


async def _realtime(pool: asyncpg.Pool, query: Query, rollups: bool) -> int:
    count: int = await pool.fetchval(_REALTIME_VISITORS, query.site_id)
    return count


async def realtime_visitors(request: Request) -> Response:
    """A bare integer, as Plausible answers (clients parse it as one: no whitespace)."""
    return await _answer(request, "realtime", _realtime)


async def aggregate(request: Request) -> Response:
    return await _answer(request, "aggregate", _aggregate)


async def timeseries(request: Request) -> Response:
    return await _answer(request, "timeseries", _timeseries)


async def breakdown(request: Request) -> Response:
    return await _answer(request, "breakdown", _breakdown)
