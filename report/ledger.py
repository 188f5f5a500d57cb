"""GET /ledger?site_id=…&date=YYYY-MM-DD: one site's delivery ledger for one UTC day
(processor/ledger.py), behind the reporting keys. Never cached: it is read to check.

Reading it scans the stream's backlog, so one reading runs at a time per process (the
others wait their turn): many at once must not take the ingest routes' time."""

from __future__ import annotations

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from common.redis_clients import REDIS_FAILURES
from processor.ledger import LedgerDay, LedgerSource, read_ledger
from report.endpoints import read_database, readable_site_day
from report.responses import OrjsonResponse, unavailable


async def ledger(request: Request) -> Response:
    asked = readable_site_day(request)
    if isinstance(asked, Response):
        return asked
    site_id, day = asked
    source: LedgerSource = request.state.ledger

    async def read(pool: asyncpg.Pool) -> LedgerDay:
        days = await read_ledger(source, pool, site_id=site_id, day=day)
        return days[0] if days else LedgerDay(site_id, day)

    try:
        async with request.state.ledger_slot:
            result = await read_database(request, read)
    except REDIS_FAILURES:
        return unavailable("Redis is unavailable; retry later")
    if isinstance(result, Response):
        return result
    return OrjsonResponse(result.as_dict())
