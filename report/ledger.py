"""GET /ledger?site_id=…&date=YYYY-MM-DD: one site's delivery ledger for one UTC day
(processor/ledger.py), behind the reporting keys. Never cached: it is read to check."""

from __future__ import annotations

import asyncpg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from processor.ledger import LedgerDay, LedgerSource, read_ledger
from report.access import ReportingAccess
from report.endpoints import read_database, valid_day, valid_site
from report.responses import OrjsonResponse, unavailable


async def ledger(request: Request) -> Response:
    site_id = valid_site(request)
    if isinstance(site_id, Response):
        return site_id
    day = valid_day(request)
    if isinstance(day, Response):
        return day
    access: ReportingAccess = request.state.reporting_access
    refusal = access.refusal(request, site_id)
    if refusal is not None:
        return refusal
    source: LedgerSource = request.state.ledger

    async def read(pool: asyncpg.Pool) -> LedgerDay:
        days = await read_ledger(source, pool, site_id=site_id, day=day)
        return days[0] if days else LedgerDay(site_id, day)

    try:
        result = await read_database(request, read)
    except (RedisError, OSError):
        return unavailable("Redis is unavailable; retry later")
    if isinstance(result, Response):
        return result
    return OrjsonResponse(result.as_dict())
