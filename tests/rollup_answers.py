"""Every rollup as the definitions of docs/metrics.md give it, computed from the stored
raw events by the plainest code, independently of the processor's; and the rollups as
the database holds them, in the same shape, to compare the two."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson

GAP = timedelta(minutes=30)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
VISIT_PROPERTIES = (
    "source",
    "referrer",
    "utm_medium",
    "utm_source",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "device",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "country",
)
EVENT_COLUMNS = ", ".join(
    (
        "event_id",
        "site_id",
        "event_type",
        "path",
        "user_id",
        "visitor_id",
        '"timestamp"',
        *VISIT_PROPERTIES,
        "props",
        "interactive",
        "hostname",
    )
)
Figures = list[int]  # visitors, visits, pageviews, bounces, duration (µs), events


async def stored_events(conn: asyncpg.Connection | asyncpg.Pool) -> list[dict[str, Any]]:
    events = [dict(row) for row in await conn.fetch(f"SELECT {EVENT_COLUMNS} FROM events")]
    for event in events:  # a connection may read times as microseconds (store.py)
        if isinstance(event["timestamp"], int):
            event["timestamp"] = EPOCH + timedelta(microseconds=event["timestamp"])
    return events


async def time_zones(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, str]:
    return dict(await conn.fetch("SELECT site_id, time_zone FROM sites"))


@dataclasses.dataclass
class Visit:
    """A visit by the definitions: its events in time order and what it is counted by."""

    site: str
    day: date
    visitor: uuid.UUID
    number: int  # the visitor's day's first visit is 0
    events: list[dict[str, Any]]
    first: dict[str, Any]  # the event its properties are of
    entry: str  # "" without a page view
    exit: str
    bounce: int
    duration: int  # microseconds

    @property
    def views(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event_type"] == "page_view"]


def local_day(event: dict[str, Any], zones: dict[str, str]) -> date:
    return _local_day(event["timestamp"], zones.get(event["site_id"], "UTC"))


def visits_of(events: list[dict[str, Any]], zones: dict[str, str]) -> list[Visit]:
    """Every visit of these events (those without a visitor are in none)."""
    by_visitor: dict[tuple[str, date, uuid.UUID], list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        visitor = _visitor(event)
        if visitor is not None:
            by_visitor[(event["site_id"], local_day(event, zones), visitor)].append(event)
    result = []
    for (site, day, visitor), own in by_visitor.items():
        own.sort(key=lambda e: e["timestamp"])
        groups: list[list[dict[str, Any]]] = []
        for event in own:
            if groups and event["timestamp"] - groups[-1][-1]["timestamp"] <= GAP:
                groups[-1].append(event)
            else:
                groups.append([event])
        for number, visit in enumerate(groups):
            views = [e for e in visit if e["event_type"] == "page_view"]
            interactions = [e for e in visit if e["event_type"] != "page_view" and e["interactive"]]
            first = min(visit, key=lambda e: (e["timestamp"], _dimension_values(e)))
            entry = min(views, key=lambda e: (e["timestamp"], e["path"]))["path"] if views else ""
            leave = max(views, key=lambda e: (e["timestamp"], e["path"]))["path"] if views else ""
            bounce = int(len(views) == 1 and not interactions)
            duration = (visit[-1]["timestamp"] - visit[0]["timestamp"]) // timedelta(microseconds=1)
            result.append(
                Visit(site, day, visitor, number, visit, first, entry, leave, bounce, duration)
            )
    return result


def expected_rollups(
    events: list[dict[str, Any]], zones: dict[str, str]
) -> dict[str, dict[tuple[Any, ...], tuple[int, ...]]]:
    stats: dict[tuple[Any, ...], Figures] = defaultdict(lambda: [0] * 6)
    pages: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    dims: dict[tuple[Any, ...], Figures] = defaultdict(lambda: [0] * 6)
    for event in events:
        site_day = (event["site_id"], local_day(event, zones))
        stats[site_day][5] += 1
        if event["event_type"] == "page_view":
            stats[site_day][2] += 1
            pages[(*site_day, event["path"])][2] += 1
    seen_pages: set[tuple[str, date, uuid.UUID, str]] = set()
    seen_values: set[tuple[str, date, uuid.UUID, str, str]] = set()
    for visit in visits_of(events, zones):
        site, day, who = visit.site, visit.day, visit.visitor
        if visit.number == 0:
            stats[(site, day)][0] += 1
        whole = (1, len(visit.views), visit.bounce, visit.duration, len(visit.events))
        stats[(site, day)][1] += 1
        stats[(site, day)][3] += visit.bounce
        stats[(site, day)][4] += visit.duration
        for path in {e["path"] for e in visit.views}:
            pages[(site, day, path)][1] += 1
            if (site, day, who, path) not in seen_pages:
                seen_pages.add((site, day, who, path))
                pages[(site, day, path)][0] += 1
        values: dict[tuple[str, str], tuple[int, ...]] = {
            (f"visit:{name}", visit.first[name] or ""): whole for name in VISIT_PROPERTIES
        }
        if visit.views:
            values[("visit:entry_page", visit.entry)] = whole
            values[("visit:exit_page", visit.exit)] = whole
        for event in visit.events:
            name_key = ("event:name", event["event_type"])
            values[name_key] = (1, 0, 0, 0, values.get(name_key, (0,) * 5)[4] + 1)
            for key, value in orjson.loads(event["props"] or "{}").items():
                prop_key = (f"event:props:{key}", value)
                values[prop_key] = (1, 0, 0, 0, values.get(prop_key, (0,) * 5)[4] + 1)
        for (dimension, value), figures in values.items():
            row = dims[(site, day, dimension, value)]
            if (site, day, who, dimension, value) not in seen_values:
                seen_values.add((site, day, who, dimension, value))
                row[0] += 1
            for index, figure in enumerate(figures):
                row[index + 1] += figure
    return {
        "daily_site_stats": {key: tuple(value) for key, value in stats.items()},
        "daily_site_path_counts": {key: tuple(value) for key, value in pages.items()},
        "daily_dimension_stats": {key: tuple(value) for key, value in dims.items()},
    }


async def stored_rollups(
    conn: asyncpg.Connection,
) -> dict[str, dict[tuple[Any, ...], tuple[int, ...]]]:
    stats = await conn.fetch(
        "SELECT site_id, date, unique_users, visits, total_views, bounces, duration_us, events"
        " FROM daily_site_stats"
    )
    pages = await conn.fetch(
        "SELECT site_id, date, path, visitors, visits, views FROM daily_site_path_counts"
    )
    dims = await conn.fetch(
        "SELECT site_id, date, dimension, value, visitors, visits, pageviews, bounces,"
        " duration_us, events FROM daily_dimension_stats"
    )

    def table(
        rows: list[asyncpg.Record], key_length: int
    ) -> dict[tuple[Any, ...], tuple[int, ...]]:
        result = {}
        for row in rows:
            values = tuple(row)
            if any(values[key_length:]):  # a row all of zeros says nothing
                result[values[:key_length]] = values[key_length:]
        return result

    return {
        "daily_site_stats": table(stats, 2),
        "daily_site_path_counts": table(pages, 3),
        "daily_dimension_stats": table(dims, 4),
    }


def differences(expected: dict[str, Any], actual: dict[str, Any], limit: int = 10) -> list[str]:
    """What differs, table by table and key by key (at most `limit` lines)."""
    lines = []
    for table in expected:
        want, got = expected[table], actual[table]
        for key in sorted(want.keys() | got.keys(), key=repr):
            if want.get(key) != got.get(key):
                lines.append(f"{table} {key}: expected {want.get(key)}, stored {got.get(key)}")
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


def _local_day(moment: datetime, zone: str) -> date:
    return moment.astimezone(UTC if zone == "UTC" else ZoneInfo(zone)).date()


def _visitor(event: dict[str, Any]) -> uuid.UUID | None:
    if event["user_id"] is not None:
        return uuid.UUID(bytes=hashlib.md5(event["user_id"].encode()).digest())
    return event["visitor_id"]


def _dimension_values(event: dict[str, Any]) -> list[str]:
    return [event[name] or "" for name in VISIT_PROPERTIES]


def expected_months(
    daily: dict[str, dict[tuple[Any, ...], tuple[int, ...]]],
) -> dict[str, dict[tuple[Any, ...], tuple[int, ...]]]:
    """The monthly rollups a closing of every month gives: the daily rows added up."""
    months: dict[str, dict[tuple[Any, ...], list[int]]] = {
        "monthly_site_path_counts": defaultdict(lambda: [0, 0, 0]),
        "monthly_dimension_stats": defaultdict(lambda: [0] * 6),
    }
    for table, monthly in (
        ("daily_site_path_counts", "monthly_site_path_counts"),
        ("daily_dimension_stats", "monthly_dimension_stats"),
    ):
        for (site, day, *key), figures in daily[table].items():
            row = months[monthly][(site, day.replace(day=1), *key)]
            for index, figure in enumerate(figures):
                row[index] += figure
    return {table: {k: tuple(v) for k, v in rows.items()} for table, rows in months.items()}


async def stored_months(
    conn: asyncpg.Connection | asyncpg.Pool,
) -> dict[str, dict[tuple[Any, ...], tuple[int, ...]]]:
    pages = await conn.fetch(
        "SELECT site_id, month, path, visitors, visits, views FROM monthly_site_path_counts"
    )
    dims = await conn.fetch(
        "SELECT site_id, month, dimension, value, visitors, visits, pageviews, bounces,"
        " duration_us, events FROM monthly_dimension_stats"
    )
    return {
        "monthly_site_path_counts": {
            tuple(r)[:3]: tuple(r)[3:] for r in pages if any(tuple(r)[3:])
        },
        "monthly_dimension_stats": {tuple(r)[:4]: tuple(r)[4:] for r in dims if any(tuple(r)[4:])},
    }
