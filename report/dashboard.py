"""The dashboard (GET /dashboard, GET /dashboard/{site_id}) and the site list it starts
from (GET /api/v1/sites). The page is static: one HTML shell, a module and a style
sheet (report/dashboard/), read once at start; everything it shows comes from the Stats
API, called from the browser with the key kept there."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from report.access import Refusal, ReportingAccess
from report.endpoints import read_database
from report.responses import OrjsonResponse
from report.stats_api import api_refusal

ASSETS = Path(__file__).parent / "dashboard"
# Sites not in the registry (SITES_MODE=open) are listed while they have recent figures.
_RECENT_SITES = """
SELECT DISTINCT site_id FROM daily_site_stats WHERE date >= current_date - 90
"""


class DashboardPage:
    def __init__(self) -> None:
        self._html = (ASSETS / "index.html").read_bytes()

    async def serve(self, request: Request) -> Response:
        # The shell holds no data; the module asks the API (and for a key when needed).
        return Response(self._html, media_type="text/html; charset=utf-8",
                        headers={"cache-control": "no-cache"})  # fmt: skip


async def sites(request: Request) -> Response:
    """GET /api/v1/sites: the sites this request may read, with their time zones."""
    access: ReportingAccess = request.state.reporting_access
    readable = access.readable(request)
    if isinstance(readable, Refusal):
        return api_refusal(access, readable)

    async def recent(pool: asyncpg.Pool) -> list[str]:
        return [record["site_id"] for record in await pool.fetch(_RECENT_SITES)]

    seen = await read_database(request, recent)
    if isinstance(seen, Response):
        return seen
    names = set(access.registered_sites()) | set(seen)
    if readable is not None:
        names &= readable
    listed = [{"site_id": name, "time_zone": access.time_zone(name)} for name in sorted(names)]
    return OrjsonResponse({"sites": listed})


def routes() -> list[Route | Mount]:
    page = DashboardPage()
    return [
        Mount("/dashboard/assets", app=StaticFiles(directory=ASSETS), name="dashboard-assets"),
        Route("/dashboard", page.serve, methods=["GET"]),
        Route("/dashboard/{site_id:path}", page.serve, methods=["GET"]),
        Route("/api/v1/sites", sites, methods=["GET"]),
    ]
