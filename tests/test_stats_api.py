"""Plausible's Stats API v1 (aggregate, timeseries, breakdown) end to end: visits sent
through HTTP in four time zones, processed with visits counted, read back through every
endpoint, metric and kept property, with filters, pages and compare; every figure equal
to what the test computes from the stored events with the definitions (the rollups of
tests/rollup_answers.py, added up and turned into metrics here). And every error."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import re
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as redis

from common.config import Settings
from sites import keys
from tests import visits_dataset
from tests.conftest import drain
from tests.rollup_answers import (
    Visit,
    expected_rollups,
    local_day,
    stored_events,
    time_zones,
    visits_of,
)

BASE = "/api/v1/stats"
VISIT_PROPERTIES = [
    "visit:source",
    "visit:referrer",
    "visit:utm_medium",
    "visit:utm_source",
    "visit:utm_campaign",
    "visit:utm_content",
    "visit:utm_term",
    "visit:device",
    "visit:browser",
    "visit:browser_version",
    "visit:os",
    "visit:os_version",
    "visit:country",
    "visit:entry_page",
    "visit:exit_page",
]
SESSION_METRICS = ["visitors", "visits", "pageviews", "bounce_rate", "visit_duration", "events"]
EMPTY_AS = {
    "visit:source": "Direct / None",
    "visit:referrer": "Direct / None",
    **{
        f"visit:{n}": "(not set)"
        for n in ("device", "browser", "browser_version", "os", "os_version")
    },
}
VERSIONS = {"visit:browser_version": "browser", "visit:os_version": "os"}
EMPTY_LEFT_OUT = {p for p in VISIT_PROPERTIES if p not in EMPTY_AS} | {"event:page"}


# The answer, computed from the definitions' rollups: sums per (site, day, value).
class Answers:
    events: list[dict[str, Any]]
    zones: dict[str, str]

    def __init__(self, rollups: dict[str, dict[tuple[Any, ...], tuple[int, ...]]]):
        # Every source as (site, day, dimension, value): (visitors, visits, pageviews,
        # bounces, duration_us, events, visits that bounce rate and duration are of).
        self.rows: dict[tuple[str, date, str, str], list[int]] = defaultdict(lambda: [0] * 7)
        for (site, day), (vs, v, pv, b, d, e) in rollups["daily_site_stats"].items():
            self.rows[(site, day, "", "")] = [vs, v, pv, b, d, e, v]
        for (site, day, dim, value), (vs, v, pv, b, d, e) in rollups[
            "daily_dimension_stats"
        ].items():
            self.rows[(site, day, dim, value)] = [vs, v, pv, b, d, e, v]
            if dim == "visit:entry_page":  # a page's bounce rate: the visits entering by it
                page = self.rows[(site, day, "event:page", value)]
                page[3], page[4], page[6] = b, d, v
        for (site, day, path), (vs, v, pv) in rollups["daily_site_path_counts"].items():
            page = self.rows[(site, day, "event:page", path)]
            page[0], page[1], page[2] = vs, v, pv

    def sums(self, site: str, first: date, last: date, dim: str) -> dict[str, list[int]]:
        by_value: dict[str, list[int]] = defaultdict(lambda: [0] * 7)
        for (s, day, d, value), figures in self.rows.items():
            if s == site and d == dim and first <= day <= last:
                by_value[value] = [a + b for a, b in zip(by_value[value], figures, strict=True)]
        return by_value

    def days(self, site: str) -> list[date]:
        return sorted({day for (s, day, _, _) in self.rows if s == site})

    def span(self, site: str) -> tuple[date, date, dict[str, str]]:
        """The site's first and last day, and the parameters of that custom period."""
        days = self.days(site)
        return (
            days[0],
            days[-1],
            {"site_id": site, "period": "custom", "date": f"{days[0]},{days[-1]}"},
        )


def metric(name: str, sums: list[int] | None, *, bucket: bool = False) -> Any:
    """`bucket`: in a timeseries, where a day without any figure has no visit duration."""
    if sums is None:
        if bucket and name == "visit_duration":
            return None
        sums = [0] * 7
    visitors, visits, pageviews, bounces, duration, events, rate_visits = sums
    if name == "bounce_rate":
        return round(100 * bounces / rate_visits) if rate_visits else 0
    if name == "visit_duration":
        return round(duration / (rate_visits * 1_000_000)) if rate_visits else 0
    if name == "views_per_visit":
        if not visits:
            return 0.0
        exact = Decimal(pageviews) / Decimal(visits)
        return float(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    return {"visitors": visitors, "visits": visits, "pageviews": pageviews, "events": events}[name]


def shown(prop: str, value: str) -> str:
    if prop == "event:name" and value == "page_view":
        return "pageview"
    return EMPTY_AS.get(prop, value) if value == "" else value


def expected_breakdown(
    answers: Answers, site: str, first: date, last: date, prop: str, metrics: list[str],
    *, limit: int = 100, page: int = 1, keep: Any = None,
) -> list[dict[str, Any]]:  # fmt: skip
    props = "event:props:"
    key = prop[len(props) :] if prop.startswith(props) else prop.partition(":")[2]
    rows = []
    for value, sums in answers.sums(site, first, last, prop).items():
        if value == "" and prop in EMPTY_LEFT_OUT:
            continue
        if keep is not None and not keep(value):
            continue
        rows.append({key: shown(prop, value)} | {m: metric(m, sums) for m in metrics})
    rows.sort(key=lambda row: (-(row[metrics[0]] or 0), row[key].encode()))
    return rows[(page - 1) * limit : page * limit]


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The rollups holding visits (COUNT_VISITS: the server reads them wherever they
    answer), or with BOTH_SOURCES, also not (it reads the raw events). The server's copy
    of the registry (time zones, keys) is refreshed often."""
    counted = getattr(request, "param", "rollups") == "rollups"
    return dataclasses.replace(settings, count_visits=counted, registry_refresh_ms=100)


@pytest.fixture
async def answered(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> Answers:
    """Visits of four sites sent through HTTP over the last three days, processed with
    visits counted and every visit folded."""
    for site, zone in visits_dataset.SITES.items():
        if zone is not None:
            await db.execute("INSERT INTO sites (site_id, time_zone) VALUES ($1, $2)", site, zone)
    first = datetime.now(UTC) - timedelta(days=3)
    for body, edge in visits_dataset.requests(120, seed=21, first=first):
        response = await http.post("/event", json=body, headers={"user-agent": edge["ua"]})
        assert response.status_code == 202, response.text
    await drain(dataclasses.replace(settings, count_visits=True), redis_client, db)
    # The server's copy of the registry, with the time zones, is refreshed every 100 ms.
    await asyncio.sleep(0.5)
    events = await stored_events(db)
    zones = await time_zones(db)
    answers = Answers(expected_rollups(events, zones))
    answers.events, answers.zones = events, zones
    return answers


async def get(http: httpx.AsyncClient, endpoint: str, **params: Any) -> Any:
    response = await http.get(f"{BASE}/{endpoint}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


SITES = ["la.example", "kolkata.example", "utc.example"]
# Each known answer read from the rollups and from the raw events.
BOTH_SOURCES = pytest.mark.parametrize("settings", ["rollups", "raw events"], indirect=True)


@BOTH_SOURCES
@pytest.mark.parametrize("site", SITES)
async def test_aggregate_timeseries_and_every_breakdown_are_the_definitions(
    http: httpx.AsyncClient, answered: Answers, site: str
) -> None:
    first, last, custom = answered.span(site)
    metrics = [*SESSION_METRICS, "views_per_visit"]
    body = await get(http, "aggregate", **custom, metrics=",".join(metrics))
    totals = answered.sums(site, first, last, "")[""]
    assert totals[1] > 10  # visits, not trivially zero
    assert body == {"results": {m: {"value": metric(m, totals)} for m in metrics}}

    series = await get(http, "timeseries", **custom, metrics=",".join(metrics))
    expected_series = []
    for n in range((last - first).days + 1):
        day = first + timedelta(days=n)
        sums = answered.sums(site, day, day, "").get("")
        expected_series.append(
            {"date": day.isoformat()} | {m: metric(m, sums, bucket=True) for m in metrics}
        )
    assert series == {"results": expected_series}

    for prop in [*VISIT_PROPERTIES, "event:page"]:
        wanted = SESSION_METRICS if prop != "event:page" else SESSION_METRICS[:-1]
        got = await get(http, "breakdown", **custom, property=prop, metrics=",".join(wanted))
        if prop in VERSIONS:  # by browser (or system) and version together, as Plausible
            owner, ordered_rows = VERSIONS[prop], []
            for key, sums in raw_answer(answered, site, first, last, [], prop).items():
                owned, _, version = key.partition("\x1f")
                row = {owner: shown(f"visit:{owner}", owned), prop[6:]: shown(prop, version)}
                ordered_rows.append(
                    (
                        -metric(wanted[0], sums),
                        key.encode(),
                        row | {m: metric(m, sums) for m in wanted},
                    )
                )
            rows = [row for *_, row in sorted(ordered_rows, key=lambda item: item[:2])]
            assert got == {"results": rows} and len(rows) >= 3, prop
            continue
        assert got == {"results": expected_breakdown(answered, site, first, last, prop, wanted)}, (
            prop
        )
    got = await get(http, "breakdown", **custom, property="event:name", metrics="events,visitors")
    expected = expected_breakdown(answered, site, first, last, "event:name", ["events", "visitors"])
    assert got == {"results": expected} and len(expected) >= 2
    # A custom property's breakdown has the events without it under "(none)".
    got = await get(
        http, "breakdown", **custom, property="event:props:plan", metrics="events,visitors"
    )
    rows = [
        {"plan": value} | {m: metric(m, sums) for m in ("events", "visitors")}
        for value, sums in raw_answer(answered, site, first, last, [], "event:props:plan").items()
    ]
    assert got == {"results": ordered(rows, "plan", "events")}
    assert {row["plan"] for row in rows} == {"free", "pro", "(none)"}


@BOTH_SOURCES
async def test_periods_end_where_plausible_s_do_in_the_site_s_time_zone(
    http: httpx.AsyncClient, answered: Answers
) -> None:
    site = "kolkata.example"
    last = answered.days(site)[-1]

    def month_end(day: date) -> date:
        return (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)

    def months_before(day: date, n: int) -> date:
        index = day.year * 12 + day.month - 1 - n
        return date(index // 12, index % 12 + 1, 1)

    cases = {
        "day": (last, last),
        "7d": (last - timedelta(days=7), last - timedelta(days=1)),
        "30d": (last - timedelta(days=30), last - timedelta(days=1)),
        "month": (last.replace(day=1), month_end(last)),
        "6mo": (months_before(last, 5), month_end(last)),
        "12mo": (months_before(last, 11), month_end(last)),
    }
    for period, (first, end) in cases.items():
        body = await get(http, "aggregate", site_id=site, period=period, date=last.isoformat(),
                         metrics="visitors,pageviews,events")  # fmt: skip
        sums = answered.sums(site, first, end, "").get("")
        assert body["results"] == {
            m: {"value": metric(m, sums)} for m in ("visitors", "pageviews", "events")
        }, period
    # Without a date: the period ends today in the site's time zone.
    today = datetime.now(ZoneInfo("Asia/Kolkata")).date()
    body = await get(http, "aggregate", site_id=site, period="day", metrics="pageviews")
    sums = answered.sums(site, today, today, "").get("")
    assert body["results"]["pageviews"]["value"] == metric("pageviews", sums)


@BOTH_SOURCES
async def test_months_filters_pages_and_compare_are_the_definitions(
    http: httpx.AsyncClient, answered: Answers
) -> None:
    site = "la.example"
    first, last, custom = answered.span(site)

    months = await get(http, "timeseries", **custom, interval="month", metrics="visitors,visits")
    month = first.replace(day=1)
    labels = [r["date"] for r in months["results"]]
    assert labels[0] == month.isoformat() and all(label.endswith("-01") for label in labels)
    assert (
        sum(r["visits"] for r in months["results"]) == answered.sums(site, first, last, "")[""][1]
    )

    # One value of a visit property: that value's visits, page views and bounce rate.
    sources = answered.sums(site, first, last, "visit:source")
    source = max(sources, key=lambda v: (sources[v][1], v))
    filters = f"visit:source=={shown('visit:source', source)}"
    body = await get(http, "aggregate", **custom, filters=filters,
                     metrics="visitors,visits,pageviews,bounce_rate,visit_duration")  # fmt: skip
    assert body["results"] == {
        m: {"value": metric(m, sources[source])}
        for m in ("visitors", "visits", "pageviews", "bounce_rate", "visit_duration")
    }
    # One page: its visitors and views; the bounce rate of the visits entering by it.
    pages = answered.sums(site, first, last, "event:page")
    path = max(pages, key=lambda v: (pages[v][2], v))
    body = await get(http, "aggregate", **custom, filters=f"event:page=={path}",
                     metrics="visitors,pageviews,bounce_rate")  # fmt: skip
    assert body["results"] == {
        m: {"value": metric(m, pages[path])} for m in ("visitors", "pageviews", "bounce_rate")
    }
    # Filters on the property broken down by choose its rows: a wildcard, a list, !=.
    wanted = ["visitors", "pageviews"]
    for filters, keep in [
        ("event:page==/p/1*", lambda p: p.startswith("/p/1")),
        ("event:page==/p/2|/p/3", lambda p: p in ("/p/2", "/p/3")),
        ("event:page!=/p/2", lambda p: p != "/p/2"),
    ]:
        got = await get(http, "breakdown", **custom, property="event:page",
                        metrics=",".join(wanted), filters=filters)  # fmt: skip
        expected = expected_breakdown(answered, site, first, last, "event:page", wanted, keep=keep)
        assert got["results"] == expected and expected, filters
    # Pages of a breakdown.
    for page in (1, 2, 3):
        got = await get(http, "breakdown", **custom, property="event:page",
                        metrics="pageviews", limit=4, page=page)  # fmt: skip
        expected = expected_breakdown(answered, site, first, last, "event:page", ["pageviews"],
                                      limit=4, page=page)  # fmt: skip
        assert got["results"] == expected, page
    # compare=previous_period: the days just before, as many.
    span = (last - first).days + 1
    middle = first + timedelta(days=span // 2)
    body = await get(http, "aggregate", site_id=site, period="custom",
                     date=f"{middle},{last}", compare="previous_period",
                     metrics="visitors,pageviews,bounce_rate")  # fmt: skip
    length = (last - middle).days + 1
    now = answered.sums(site, middle, last, "").get("")
    before = answered.sums(
        site, middle - timedelta(days=length), middle - timedelta(days=1), ""
    ).get("")
    for m in ("visitors", "pageviews", "bounce_rate"):
        new, old = metric(m, now), metric(m, before)
        if m == "bounce_rate":
            change = None if old == 0 else new - old
        else:
            change = (100 if new else 0) if old == 0 else round((new - old) / old * 100)
        assert body["results"][m] == {"value": new, "change": change, "comparison_value": old}


@BOTH_SOURCES
async def test_a_site_without_events_answers_zeros_and_empty_buckets(
    http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    params = {"site_id": "nobody.example", "period": "custom", "date": "2026-01-30,2026-02-02"}
    body = await get(
        http, "aggregate", **params, metrics="visitors,bounce_rate,visit_duration,views_per_visit"
    )
    assert body == {"results": {"visitors": {"value": 0}, "bounce_rate": {"value": 0},
                                "visit_duration": {"value": 0}, "views_per_visit": {"value": 0.0}}}  # fmt: skip
    body = await get(http, "timeseries", **params, metrics="visitors,bounce_rate,visit_duration")
    assert body["results"][0] == {
        "date": "2026-01-30",
        "visitors": 0,
        "bounce_rate": 0,
        "visit_duration": None,
    }
    assert [r["date"] for r in body["results"]] == [
        "2026-01-30",
        "2026-01-31",
        "2026-02-01",
        "2026-02-02",
    ]
    body = await get(http, "breakdown", **params, property="visit:source")
    assert body == {"results": []}


DOCS = "https://plausible.io/docs/stats-api"


@pytest.mark.parametrize(
    ("endpoint", "params", "field", "message"),
    [
        ("aggregate", {}, "site_id",
         "Missing site ID. Please provide the required site_id parameter with your request."),
        ("aggregate", {"period": "year"}, "period",
         f"Error parsing `period` parameter: invalid period `year`. Please find accepted values in our docs: {DOCS}#time-periods"),
        ("aggregate", {"date": "2026-13-01"}, "date",
         "Error parsing `date` parameter: invalid_format. Please specify a valid date in ISO-8601 format."),
        ("aggregate", {"period": "custom"}, "date",
         f"The `date` parameter is required when using a custom period. See {DOCS}#time-periods"),
        ("aggregate", {"period": "custom", "date": "2026-01-01"}, "date",
         f"Invalid format for `date` parameter. When using a custom period, please include two ISO-8601 formatted dates joined by a comma. See {DOCS}#time-periods"),
        ("timeseries", {"interval": "week"}, "interval",
         "Error parsing `interval` parameter: invalid interval `week`. Valid intervals are `day`, `month`"),
        ("aggregate", {"metrics": "visitors,sessions"}, "metrics",
         f"The metric `sessions` is not recognized. Find valid metrics from the documentation: {DOCS}#metrics"),
        ("aggregate", {"metrics": "visitors,visitors"}, "metrics", "Metrics cannot be queried multiple times."),
        ("breakdown", {"property": "event:name", "metrics": "bounce_rate"}, "metrics",
         "Session metric `bounce_rate` cannot be queried for breakdown by `event:name`."),
        ("aggregate", {"filters": "event:props:plan==pro", "metrics": "visits"}, "metrics",
         "Session metric `visits` cannot be queried when using a filter on `event:props:plan`."),
        ("aggregate", {"metrics": "conversion_rate"}, "metrics",
         "Metric `conversion_rate` can only be queried in a goal breakdown or with a goal filter"),
        ("aggregate", {"filters": "event:page==/a", "metrics": "views_per_visit"}, "metrics",
         "Metric `views_per_visit` cannot be queried with a filter on `event:page`."),
        ("breakdown", {"property": "visit:source", "metrics": "views_per_visit"}, "metrics",
         "Metric `views_per_visit` is not supported in breakdown queries."),
        ("aggregate", {"metrics": "time_on_page"}, "metrics",
         "Metric `time_on_page` can only be queried in a page breakdown or with a page filter."),
        ("breakdown", {}, "property",
         "The `property` parameter is required. Please provide at least one property to show a breakdown by."),
        ("breakdown", {"property": "visit:planet"}, "property",
         f"Invalid property 'visit:planet'. Please provide a valid property for the breakdown endpoint: {DOCS}#properties"),
        ("breakdown", {"property": "event:hostname"}, "property",
         f"Property 'event:hostname' is currently not supported for breakdowns.  Please provide a valid property for the breakdown endpoint: {DOCS}#properties"),
        ("breakdown", {"property": "event:page", "limit": "1001"}, "limit",
         "Please provide limit as a number between 1 and 1000."),
        ("breakdown", {"property": "event:page", "limit": "ten"}, "limit",
         "Please provide limit as a number between 1 and 1000."),
        ("aggregate", {"filters": "visit:planet==mars"}, "filters",
         f"Invalid filter property 'visit:planet'. Please provide a valid filter property: {DOCS}#properties"),
    ],
)  # fmt: skip
async def test_every_documented_error_is_plausible_s(
    http: httpx.AsyncClient, endpoint: str, params: dict[str, str], field: str, message: str
) -> None:
    query = ({"site_id": "s.example"} if field != "site_id" else {}) | params
    response = await http.get(f"{BASE}/{endpoint}", params=query)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == message
    assert body["field"] == field and body["code"]


@pytest.mark.parametrize(
    ("endpoint", "params", "field"),
    [
        ("aggregate", {"filters": "event:goal==Signup"}, "filters"),
        ("breakdown", {"property": "visit:city"}, "property"),
        ("aggregate", {"filters": '[["is","visit:source",["Google"]]]'}, "filters"),
        ("breakdown", {"property": "event:page", "metrics": "events"}, "metrics"),
    ],
)
async def test_what_is_not_kept_is_a_400_that_says_so(
    http: httpx.AsyncClient, endpoint: str, params: dict[str, str], field: str
) -> None:
    response = await http.get(f"{BASE}/{endpoint}", params={"site_id": "s.example"} | params)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert response.json()["error"]


async def test_keys_are_asked_for_as_plausible_asks_for_them(
    http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await db.execute("INSERT INTO sites (site_id) VALUES ('mine.example'), ('other.example')")
    async with db.acquire() as conn:
        key, _ = await keys.create(conn, name="k", scope="stats:read", site_ids=["mine.example"])
    params = {"site_id": "mine.example"}
    for _ in range(200):  # until the server's copy of the registry has the key
        response = await http.get(f"{BASE}/aggregate", params=params)
        if response.status_code == 401:
            break
    assert response.json()["error"] == (
        "Missing API key. Please use a valid Plausible API key as a Bearer Token."
    )
    invalid = (
        "Invalid API key or site ID. Please make sure you're using a valid API key "
        "with access to the site you've requested."
    )
    other = await http.get(f"{BASE}/aggregate", params={"site_id": "other.example"},
                           headers={"authorization": f"Bearer {key}"})  # fmt: skip
    assert (other.status_code, other.json()["error"]) == (401, invalid)
    wrong = await http.get(f"{BASE}/aggregate", params=params,
                           headers={"authorization": "Bearer " + "x" * 64})  # fmt: skip
    assert (wrong.status_code, wrong.json()["error"]) == (401, invalid)
    good = await http.get(f"{BASE}/aggregate", params=params,
                          headers={"authorization": f"Bearer {key}"})  # fmt: skip
    assert good.status_code == 200
    assert good.json() == {"results": {"visitors": {"value": 0}}}


# Queries only the raw events answer, and what the definitions give for them (the
# combination rules of report/raw.py, written again here plainly).
STORED_AS = {"Direct / None": "", "(not set)": "", "pageview": "page_view"}


def matches(text: str, value: str | None) -> bool:
    """Does `value` pass the filter `text` (property==values or property!=value)?"""
    negated = "!=" in text
    raw = text.split("!=" if negated else "==", 1)[1]
    if value is None:  # an event without the page or property asked about
        return False
    if "*" in raw:
        alternatives = [re.escape(a).replace(r"\*", ".*") for a in raw.split("|")]
        found = re.fullmatch("|".join(alternatives), value) is not None
    else:
        found = value in {STORED_AS.get(v, v) for v in raw.split("|")}
    return found != negated


def visit_value(visit: Visit, prop: str) -> str:
    name = prop.removeprefix("visit:")
    if name in ("entry_page", "exit_page"):
        return visit.entry if name == "entry_page" else visit.exit
    return visit.first[name] or ""


def event_value(event: dict[str, Any], prop: str) -> str | None:
    if prop == "event:page":
        return event["path"] if event["event_type"] == "page_view" else None
    if prop == "event:name":
        return event["event_type"]
    if prop == "event:hostname":
        return event["hostname"] or ""
    # Without the property: "(none)", as Plausible shows (and filters) it.
    return orjson.loads(event["props"] or "{}").get(prop.removeprefix("event:props:"), "(none)")


def hour_of(event: dict[str, Any], zone: str) -> str:
    local = event["timestamp"].astimezone(ZoneInfo(zone))
    return local.strftime("%Y-%m-%d %H:00:00")


def raw_answer(
    data: Answers, site: str, first: date, last: date, filters: list[str], group: str
) -> dict[str, list[int]]:
    """Per key, the seven sums of report/sums.py."""
    zone = data.zones.get(site, "UTC")
    prop_of = [f.split("!=" if "!=" in f else "==")[0] for f in filters]
    visit_filters = [f for f, p in zip(filters, prop_of, strict=True) if p.startswith("visit:")]
    event_filters = [
        (f, p) for f, p in zip(filters, prop_of, strict=True) if not p.startswith("visit:")
    ]
    page_filters = [f for f, p in event_filters if p == "event:page"]
    by_event = group in ("event:page", "event:name") or group.startswith("event:props:")
    events_side: dict[str, list[Any]] = defaultdict(lambda: [set(), set(), 0, 0])
    visits_side: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])

    def event_ok(event: dict[str, Any]) -> bool:
        return all(matches(f, event_value(event, p)) for f, p in event_filters)

    def key_of(event: dict[str, Any], visit: Visit | None) -> str | None:
        day = local_day(event, data.zones)
        if group in ("event:page", "event:name") or group.startswith("event:props:"):
            return event_value(event, group)
        if group.startswith("visit:"):
            assert visit is not None
            if group in VERSIONS:
                return f"{visit_value(visit, 'visit:' + VERSIONS[group])}\x1f{visit_value(visit, group)}"
            return visit_value(visit, group)
        return {"": "", "day": day.isoformat(), "month": day.replace(day=1).isoformat(),
                "hour": hour_of(event, zone)}[group]  # fmt: skip

    def count_event(event: dict[str, Any], visit: Visit | None) -> None:
        key = key_of(event, visit)
        if key is None or (group == "event:page" and event["event_type"] != "page_view"):
            return
        side = events_side[key]
        if visit is not None:
            side[0].add((visit.day, visit.visitor))
            side[1].add((visit.day, visit.visitor, visit.number))
        side[2] += event["event_type"] == "page_view"
        side[3] += 1

    for visit in visits_of(data.events, data.zones):
        if visit.site != site or not first <= visit.day <= last:
            continue
        if not all(
            matches(f, visit_value(visit, p))
            for f, p in zip(filters, prop_of, strict=True)
            if f in visit_filters
        ):
            continue
        counted = [e for e in visit.events if event_ok(e)]
        if event_filters and not counted:
            continue
        if not by_event or group == "event:page":
            if group == "event:page":
                key = visit.entry
            elif group == "hour":
                key = hour_of(visit.events[0], zone)
            else:
                key = key_of(visit.events[0], visit) or ""
            side = visits_side[key]
            side[0] += 1
            if all(matches(f, visit.entry) for f in page_filters):
                side[1] += visit.bounce
                side[2] += visit.duration
                side[3] += 1
        for event in counted:
            count_event(event, visit)
    if all(p == "event:page" for p in prop_of) and group in (
        "",
        "hour",
        "day",
        "month",
        "event:page",
    ):
        for event in data.events:
            no_visitor = event["user_id"] is None and event["visitor_id"] is None
            if (
                no_visitor
                and event["site_id"] == site
                and first <= local_day(event, data.zones) <= last
            ):
                if event_ok(event):
                    count_event(event, None)
    result = {}
    for key in events_side.keys() | (set() if by_event else visits_side.keys()):
        visitors, visit_ids, pageviews, events = events_side.get(key, [set(), set(), 0, 0])
        visits, bounces, duration, rate_visits = visits_side.get(key, [0, 0, 0, 0])
        visits = len(visit_ids) if by_event else visits
        result[key] = [len(visitors), visits, pageviews, bounces, duration, events, rate_visits]
    return result


def ordered(rows: list[dict[str, Any]], key: str, first_metric: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: (-(row[first_metric] or 0), row[key].encode()))


RAW_AGGREGATES = [
    ["visit:source==Direct / None", "visit:browser==Chrome"],
    ["visit:browser==Firefox|Safari"],
    ["visit:device!=Mobile", "event:page==/p/1*"],
    ["visit:entry_page==/p/2|/p/3|/p/4", "visit:os==(not set)"],
    ["event:page==/p/1|/p/2", "event:page!=/p/2"],
    ["event:hostname==*.example", "visit:browser==Firefox"],
    ["event:hostname!=la.example"],
]
RAW_BREAKDOWNS = [
    ("event:page", ["visit:browser==Firefox"], ["visitors", "visits", "pageviews", "bounce_rate", "visit_duration"]),
    ("visit:browser", ["event:page==/p/3"], ["visitors", "visits", "pageviews", "bounce_rate"]),
    ("visit:source", ["visit:device==Desktop", "event:page!=/p/0"], ["visits", "visitors", "pageviews"]),
    ("event:props:plan", ["visit:browser==Safari"], ["visitors", "events"]),
    ("event:name", ["event:props:plan==pro"], ["events", "visitors"]),
    ("visit:exit_page", ["event:name==signup"], ["visitors", "events"]),
]  # fmt: skip


@pytest.mark.parametrize("site", ["la.example", "kolkata.example"])
async def test_what_only_the_raw_events_answer_is_the_definitions(
    http: httpx.AsyncClient, answered: Answers, site: str
) -> None:
    first, last, custom = answered.span(site)
    checked = 0
    for filters in RAW_AGGREGATES:
        event_filter = any(not f.startswith("visit:") for f in filters)
        page_filter = any(f.startswith("event:page") for f in filters)
        metrics = ["visitors", "visits", "pageviews", "bounce_rate", "visit_duration"]
        if not page_filter:
            metrics += ["events"] + ([] if event_filter else ["views_per_visit"])
        body = await get(
            http, "aggregate", **custom, filters=";".join(filters), metrics=",".join(metrics)
        )
        sums = raw_answer(answered, site, first, last, filters, "").get("")
        assert body["results"] == {m: {"value": metric(m, sums)} for m in metrics}, filters
        checked += sums is not None and sums[0] > 0
    assert checked >= 3  # not trivially zero
    for prop, filters, metrics in RAW_BREAKDOWNS:
        got = await get(http, "breakdown", **custom, property=prop, filters=";".join(filters),
                        metrics=",".join(metrics))  # fmt: skip
        key = prop.removeprefix("event:props:").partition(":")[2] or prop.removeprefix(
            "event:props:"
        )
        rows = [
            {key: shown(prop, value)} | {m: metric(m, sums) for m in metrics}
            for value, sums in raw_answer(answered, site, first, last, filters, prop).items()
            if not (value == "" and prop in EMPTY_LEFT_OUT)
        ]
        assert got["results"] == ordered(rows, key, metrics[0]), (prop, filters)
        assert rows, (prop, filters)
    # Hours of each day (period=day), with and without filters.
    metrics = ["visitors", "visits", "pageviews", "bounce_rate", "visit_duration"]
    for day in answered.days(site):
        for filters in ([], ["visit:source==Direct / None", "visit:browser!=Safari"]):
            params = {"site_id": site, "period": "day", "date": day.isoformat()}
            if filters:
                params["filters"] = ";".join(filters)
            got = await get(http, "timeseries", **params, metrics=",".join(metrics))
            sums = raw_answer(answered, site, day, day, filters, "hour")
            expected = [
                {"date": f"{day} {hour:02d}:00:00"}
                | {m: metric(m, sums.get(f"{day} {hour:02d}:00:00"), bucket=True) for m in metrics}
                for hour in range(24)
            ]
            assert got["results"] == expected, (day, filters)


async def test_realtime_visitors_are_those_of_the_last_five_minutes_as_a_bare_integer(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    now = datetime.now(UTC)
    sent = [
        ("live.example", "a", now - timedelta(minutes=1)),
        ("live.example", "a", now - timedelta(seconds=10)),
        ("live.example", "b", now - timedelta(minutes=4)),
        ("live.example", "c", now - timedelta(minutes=10)),  # gone
        ("other.example", "d", now - timedelta(minutes=1)),  # another site's
    ]
    for site, user, at in sent:
        body = {"site_id": site, "user_id": user, "event_type": "page_view", "url": f"https://{site}/",
                "timestamp": at.isoformat()}  # fmt: skip
        assert (await http.post("/event", json=body)).status_code == 202
    await drain(settings, redis_client, db)
    response = await http.get(f"{BASE}/realtime/visitors", params={"site_id": "live.example"})
    assert response.status_code == 200
    assert response.text == "2"
    missing = await http.get(f"{BASE}/realtime/visitors")
    assert missing.status_code == 400


async def test_breakdowns_and_timeseries_as_csv_are_their_json(
    http: httpx.AsyncClient, answered: Answers
) -> None:
    site = "berlin.example"
    *_, custom = answered.span(site)
    for endpoint, extra, first in [
        ("breakdown", {"property": "visit:source", "metrics": "visitors,visit_duration"}, "source"),
        ("timeseries", {"metrics": "visitors,bounce_rate,visit_duration"}, "date"),
    ]:
        params = custom | extra
        rows = (await get(http, endpoint, **params))["results"]
        for how in (
            {"params": params | {"format": "csv"}},
            {"params": params, "headers": {"accept": "text/csv"}},
        ):
            response = await http.get(f"{BASE}/{endpoint}", **how)  # type: ignore[arg-type]
            assert response.headers["content-type"] == "text/csv; charset=utf-8"
            assert "attachment" in response.headers["content-disposition"]
            table = list(csv.reader(io.StringIO(response.text)))
            columns = [first, *extra["metrics"].split(",")]
            assert table[0] == columns
            assert table[1:] == [
                ["" if row[c] is None else str(row[c]) for c in columns] for row in rows
            ]
            assert len(table) > 2
