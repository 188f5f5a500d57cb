"""The dashboard in Debian's headless Chromium, driven by Playwright: on visits sent
through HTTP and processed, the page shows exactly the Stats API's figures (summary with
changes, chart, every panel, realtime), and changing the period, clicking a row to
filter, removing the filter and paging update them. A screenshot of each state is saved
under tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from playwright.async_api import Page, async_playwright

from common.config import Settings
from sites import keys
from tests import visits_dataset
from tests.browser import DESKTOP_USER_AGENT, require_chromium
from tests.conftest import drain

ARTIFACTS = Path(__file__).parent / "artifacts"
SITE = "la.example"
SUMMARY = "visitors,visits,pageviews,views_per_visit,bounce_rate,visit_duration"
PANELS = ["visit:source", "event:page", "visit:country", "visit:browser"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, count_visits=True, registry_refresh_ms=100)


@pytest.fixture
async def visits(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    """Five days of visits to sites in four time zones, and two visitors on now."""
    for site, zone in visits_dataset.SITES.items():
        if zone is not None:
            await db.execute("INSERT INTO sites (site_id, time_zone) VALUES ($1, $2)", site, zone)
    first = datetime.now(UTC) - timedelta(days=5)
    sent = visits_dataset.requests(260, seed=4, first=first)
    now = datetime.now(UTC).isoformat()
    sent += [({"site_id": SITE, "event_type": "page_view", "url": f"https://{SITE}/live",
               "user_id": user, "timestamp": now}, {"ua": DESKTOP_USER_AGENT})
             for user in ("live-1", "live-2")]  # fmt: skip
    for body, edge in sent:
        response = await http.post("/event", json=body, headers={"user-agent": edge["ua"]})
        assert response.status_code == 202, response.text
    await drain(settings, redis_client, db)


@contextlib.asynccontextmanager
async def chromium_page() -> AsyncIterator[Page]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=require_chromium(), headless=True
        )
        try:
            context = await browser.new_context(
                user_agent=DESKTOP_USER_AGENT, viewport={"width": 1280, "height": 900}
            )
            yield await context.new_page()
        finally:
            await browser.close()


async def settled(page: Page) -> None:
    """Until the page has drawn every figure of its latest state."""
    await page.wait_for_function(
        """() => document.getElementById('app')
            && !document.getElementById('app').dataset.loading
            && document.querySelector('[data-metric="visitors"][data-value]')
            && document.querySelectorAll('[data-panel] .pager').length === 4"""
    )


async def shown(page: Page) -> dict[str, Any]:
    """Every figure on the page, as its data- attributes carry it."""
    result: dict[str, Any] = await page.evaluate(
        """() => ({
            summary: Object.fromEntries([...document.querySelectorAll('[data-metric]')]
                .map(n => [n.dataset.metric, n.dataset.value === undefined ? null
                    : [Number(n.dataset.value), n.querySelector('[data-change]').dataset.change]])),
            panels: Object.fromEntries([...document.querySelectorAll('[data-panel]')].map(p =>
                [p.dataset.property, [...p.querySelectorAll('li')].map(li =>
                    [li.dataset.value, Number(li.dataset.count)])])),
            chart: [...document.querySelectorAll('#chart circle')].map(c =>
                [c.dataset.date, Number(c.dataset.visitors), Number(c.dataset.pageviews)]),
            realtime: document.getElementById('realtime').dataset.value,
            filters: [...document.querySelectorAll('[data-filter]')].map(n => n.dataset.filter),
        })"""
    )
    return result


async def api_figures(http: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    """The same figures, as the Stats API answers them."""
    base = {"site_id": SITE} | params
    page_filtered = "event:page" in params.get("filters", "")
    metrics = SUMMARY.replace("views_per_visit,", "") if page_filtered else SUMMARY
    aggregate = (
        await http.get(
            "/api/v1/stats/aggregate",
            params=base | {"metrics": metrics, "compare": "previous_period"},
        )
    ).json()["results"]
    summary = {
        metric: None
        if metric not in aggregate
        else [
            aggregate[metric]["value"],
            "" if aggregate[metric]["change"] is None else str(aggregate[metric]["change"]),
        ]
        for metric in SUMMARY.split(",")
    }
    panels = {}
    for prop in PANELS:
        rows = (
            await http.get(
                "/api/v1/stats/breakdown", params=base | {"property": prop, "limit": "10"}
            )
        ).json()["results"]
        key = prop.split(":")[1]
        panels[prop] = [[str(row[key]), row["visitors"]] for row in rows]
    series = (
        await http.get("/api/v1/stats/timeseries", params=base | {"metrics": "visitors,pageviews"})
    ).json()["results"]
    realtime = (await http.get("/api/v1/stats/realtime/visitors", params={"site_id": SITE})).text
    return {
        "summary": summary,
        "panels": panels,
        "chart": [[row["date"], row["visitors"], row["pageviews"]] for row in series],
        "realtime": realtime,
    }


def screenshot_path(name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / f"dashboard-{name}.png")


async def test_the_dashboard_shows_the_api_s_figures_and_follows_period_filters_and_pages(
    http: httpx.AsyncClient, visits: None
) -> None:
    async with chromium_page() as page:
        await page.goto(f"{http.base_url}/dashboard/{SITE}?period=7d")
        await settled(page)
        on_page = await shown(page)
        expected = await api_figures(http, period="7d")
        assert {k: on_page[k] for k in expected} == expected
        assert on_page["summary"]["visits"][0] > 10 and len(on_page["panels"]["event:page"]) == 10
        assert on_page["realtime"] == "2"
        await page.screenshot(path=screenshot_path("7d"), full_page=True)

        # Another period from the picker: every figure follows.
        await page.select_option("#period", "30d")
        await settled(page)
        assert "period=30d" not in page.url  # the default period is left out of the URL
        on_page = await shown(page)
        expected = await api_figures(http, period="30d")
        assert {k: on_page[k] for k in expected} == expected

        # A click on a source filters the whole page (pages by source: from raw events).
        source = on_page["panels"]["visit:source"][1][0]
        await page.click(f'[data-panel="0"] li[data-value="{source}"]')
        await settled(page)
        on_page = await shown(page)
        filters = f"visit:source=={source}"
        assert on_page["filters"] == [filters]
        expected = await api_figures(http, period="30d", filters=filters)
        assert {k: on_page[k] for k in expected} == expected
        assert (
            on_page["summary"]["visits"][0]
            < (await api_figures(http, period="30d"))["summary"]["visits"][0]
        )
        await page.screenshot(path=screenshot_path("filtered"), full_page=True)

        # A page filter on top: the summary leaves views per visit out, as the API does.
        path = on_page["panels"]["event:page"][0][0]
        await page.click(f'[data-panel="1"] li[data-value="{path}"]')
        await settled(page)
        on_page = await shown(page)
        both = f"{filters};event:page=={path}"
        assert on_page["filters"] == both.split(";")
        assert {k: on_page[k] for k in expected} == await api_figures(
            http, period="30d", filters=both
        )
        assert on_page["summary"]["views_per_visit"] is None

        # Removing the filters brings the whole site back.
        await page.click(f'[data-filter="event:page=={path}"] button')
        await settled(page)
        await page.click(f'[data-filter="{filters}"] button')
        await settled(page)
        on_page = await shown(page)
        assert on_page["filters"] == []
        assert {k: on_page[k] for k in expected} == await api_figures(http, period="30d")

        # The next page of the pages panel is the API's second page.
        await page.click('[data-panel="1"] [data-pager="next"]')
        await page.wait_for_selector('[data-panel="1"] [data-page="2"]')
        rows = (await shown(page))["panels"]["event:page"]
        params = {"site_id": SITE, "period": "30d", "property": "event:page", "page": "2"}
        response = await http.get("/api/v1/stats/breakdown", params=params | {"limit": "10"})
        second = response.json()["results"]
        assert rows == [[row["page"], row["visitors"]] for row in second] and rows


async def test_a_keyed_dashboard_asks_for_the_key_once_then_lists_the_sites(
    http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await db.execute("INSERT INTO sites (site_id) VALUES ('shop.example'), ('blog.example')")
    async with db.acquire() as conn:
        key, _ = await keys.create(
            conn, name="dashboard", scope="stats:read", site_ids=["shop.example"]
        )
    async with chromium_page() as page:
        for _ in range(100):  # until the server's copy of the registry has the key
            await page.goto(f"{http.base_url}/dashboard")
            form = await page.wait_for_selector("#key-form, [data-site]")
            if await form.get_attribute("id") == "key-form":
                break
        await page.fill("#api-key", key)
        await page.click("#key-form button")
        await page.wait_for_selector("[data-site]")
        listed = await page.eval_on_selector_all(
            "[data-site]", "nodes => nodes.map(n => n.dataset.site)"
        )
        assert listed == ["shop.example"]  # the key reads that site only
        await page.reload()  # the key is kept in the browser
        await page.wait_for_selector("[data-site]")
        await page.click("text=shop.example")
        await settled(page)
        assert (await shown(page))["summary"]["visitors"] == [0, "0"]
