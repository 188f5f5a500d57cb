"""Which source answers a Stats API query, and the one statement that reads it.

Every rollup row (docs/metrics.md) carries the same sums: visitors, visits, page views,
bounces, visit duration and events, per site and local day. A query picks its rows (the
site's, a page's, or a dimension value's), adds them up per day, month, value or over
the whole period, and derives its metrics from the sums in SQL (report/sums.py), where a
breakdown also sorts and pages them.

The rollups answer exactly, and so are read for:
- no filter: the site's rows (a breakdown: its property's rows);
- one filter `property==value` in aggregate and timeseries: that value's rows;
- in a breakdown, any filters on the property broken down by (they choose its rows).
Everything else (filters on two properties, several values of one, whose visitors
cannot be added up; hours), and every query while the processor does not count visits
(COUNT_VISITS off: the rollups hold no visits), is read from the raw events
(report/raw.py), which give the same sums.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from typing import Any, Union

import asyncpg

from common.constants import PAGE_VIEW
from processor.rollups import ENTRY_PAGE, EVENT_NAME, PAGE, PROPS_PREFIX
from report.query import HOSTNAME, Filter, Period, Query, month_end
from report.raw import NO_PROPERTY, VERSION_SEPARATOR, VERSIONS, RawStatement
from report.sums import SUMS, predicate, select_metrics

DIRECT = "Direct / None"
NOT_SET = "(not set)"
PAGEVIEW = "pageview"  # Plausible's name of the page view event
# How a breakdown shows the value '' (nothing known) of each property, and which it
# leaves out instead (B.6, B.7 of the contracts).
_SHOWN_AS_EMPTY = {
    "visit:source": DIRECT,
    "visit:referrer": DIRECT,
    "visit:device": NOT_SET,
    "visit:browser": NOT_SET,
    "visit:browser_version": NOT_SET,
    "visit:os": NOT_SET,
    "visit:os_version": NOT_SET,
}
_EMPTY_LEFT_OUT = frozenset(
    {"visit:utm_medium", "visit:utm_source", "visit:utm_campaign", "visit:utm_content",
     "visit:utm_term", "visit:country", "visit:entry_page", "visit:exit_page", PAGE}
)  # fmt: skip

# The rows of each kind of source: $1 the site; `{when}` the days (or closed months)
# read, `{dimension}` and `{values}` (a predicate on the column `value`) are filled in.
# rate_visits are the visits that bounce rate and visit duration are of: for a page,
# the visits that entered by it (as Plausible counts them with a page filter). A closed
# month's row (processor/months.py) stands for its days, dated its first day.
_SITE_ROWS = """
SELECT date, '' AS value, unique_users AS visitors, visits, total_views AS pageviews,
    bounces, duration_us, events, visits AS rate_visits
FROM daily_site_stats WHERE site_id = $1 AND {when}
"""
_DIMENSION_ROWS = """
SELECT {date} AS date, value, visitors, visits, pageviews, bounces, duration_us, events,
    visits AS rate_visits
FROM {table}_dimension_stats
WHERE site_id = $1 AND {when} AND dimension = {dimension} AND {values}
"""
_PAGE_ROWS = """
SELECT {date} AS date, path AS value, visitors, visits, views AS pageviews, 0 AS bounces,
    0 AS duration_us, 0 AS events, 0 AS rate_visits
FROM {table}_site_path_counts
WHERE site_id = $1 AND {when} AND {paths}
"""
# With the bounce rate or visit duration: those of the visits entering by each page.
_ENTRY_ROWS = """
SELECT {date} AS date, value, 0, 0, 0, bounces, duration_us, 0, visits
FROM {table}_dimension_stats
WHERE site_id = $1 AND {when} AND dimension = {dimension} AND {values}
"""
_CLOSED_MONTHS = """
SELECT month FROM closed_months WHERE site_id = $1 AND month BETWEEN $2 AND $3 ORDER BY month
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """The rows a query adds up: a dimension ("" the site's), and which of its values."""

    dimension: str
    values: tuple[Filter, ...] = ()  # all must hold


def rollup_source(query: Query) -> Source | None:
    """The rollup rows that answer the query exactly; None where none do."""
    if query.interval == "hour":
        return None
    if any(f.property == HOSTNAME for f in query.filters):  # in no rollup
        return None
    if query.property is not None:
        if query.property in VERSIONS:  # kept per version alone: by browser too from events
            return None
        if query.property.startswith(PROPS_PREFIX):  # with "(none)": events without it
            return None
        if any(f.property != query.property for f in query.filters):
            return None
        return Source(query.property, query.filters)
    if not query.filters:
        return Source("")
    first = query.filters[0]
    if len(query.filters) > 1 or first.negated or first.pattern or len(first.values) != 1:
        return None
    if first.property.startswith(PROPS_PREFIX) and first.values == (NO_PROPERTY,):
        return None  # events without the property: in no rollup
    return Source(first.property, (first,))


Reader = Union["Statement", RawStatement]


async def reader(
    conn: asyncpg.Pool | asyncpg.Connection, query: Query, period: Period, *, rollups: bool
) -> Reader:
    """The statement that gives the query's sums per key: from the rollups where they
    answer it (`rollups`: they hold visits), else from the raw events."""
    filters = tuple(_stored(f) for f in query.filters)
    query = dataclasses.replace(query, filters=filters)
    source = rollup_source(query) if rollups else None
    if query.property is not None:
        group = query.property
    elif query.interval in ("hour", "month") or query.endpoint == "timeseries":
        group = query.interval
    else:
        group = ""
    if source is None:
        return RawStatement(query.site_id, query.time_zone, period, filters, group)
    rates = bool({"bounce_rate", "visit_duration"} & set(query.metrics))
    closed: list[date] = []
    if source.dimension and group != "day" and period.days >= 28:
        closed = [
            r["month"]
            for r in await conn.fetch(_CLOSED_MONTHS, query.site_id, period.first, period.last)
            if month_end(r["month"]) <= period.last
        ]
    return Statement(
        query.site_id,
        source,
        period,
        "value" if query.property else group,
        rates=rates,
        closed=closed,
    )


def _open_runs(period: Period, closed: list[date]) -> list[tuple[date, date]]:
    """The period's days outside the closed months, as runs of consecutive days."""
    runs: list[tuple[date, date]] = []
    start = period.first
    for month in sorted(closed):
        if start < month:
            runs.append((start, month - timedelta(days=1)))
        start = month_end(month) + timedelta(days=1)
    if start <= period.last:
        runs.append((start, period.last))
    return runs


def _stored(condition: Filter) -> Filter:
    """The filter's values as the rollups store them ("Direct / None" is '')."""
    shown = _SHOWN_AS_EMPTY.get(condition.property)
    values = tuple(stored_value(condition.property, value) for value in condition.values)
    if shown is None and condition.property != EVENT_NAME:
        return condition
    return dataclasses.replace(condition, values=values)


def stored_value(prop: str, shown: str) -> str:
    if prop == EVENT_NAME:
        return PAGE_VIEW if shown == PAGEVIEW else shown
    return "" if shown == _SHOWN_AS_EMPTY.get(prop) else shown


def shown_value(prop: str, stored: str) -> str:
    if prop == EVENT_NAME:
        return PAGEVIEW if stored == PAGE_VIEW else stored
    return _SHOWN_AS_EMPTY.get(prop, stored) if stored == "" else stored


def result_columns(prop: str) -> list[str]:
    """The columns naming a breakdown row's value."""
    return [VERSIONS[prop], result_key(prop)] if prop in VERSIONS else [result_key(prop)]


def result_key(prop: str) -> str:
    """What a breakdown row calls its value: the property without its prefix."""
    if prop.startswith(PROPS_PREFIX):
        return prop[len(PROPS_PREFIX) :]
    return prop.partition(":")[2]


class Statement:
    """The SQL and arguments that add up a source's rows over a period."""

    def __init__(
        self,
        site_id: str,
        source: Source,
        period: Period,
        group: str,
        *,
        rates: bool = True,
        closed: list[date] | None = None,
    ):
        """`group`: "" (one row), "day", "month" or "value"; `rates`: the bounce rate or
        visit duration are asked for; `closed`: closed months wholly in the period, read
        as such (not with a "day" group)."""
        self.args: list[Any] = [site_id]
        closed = closed or []
        # Daily rows by ranges of days (each an index range scan), closed months' rows.
        parts = [
            ("daily", "date", self._range(first, last))
            for first, last in _open_runs(period, closed)
        ]
        if closed:
            self.args.append(list(closed))
            parts.append(("monthly", "month", f"month = ANY(${len(self.args)}::date[])"))
        if source.dimension == "":
            rows = [_SITE_ROWS.format(when=when) for table, _, when in parts if table == "daily"]
        else:
            # Every parameter must be used (PostgreSQL infers their types from that).
            page = source.dimension == PAGE
            dimension = values = ""
            if rates or not page:
                self.args.append(ENTRY_PAGE if page else source.dimension)
                dimension = f"${len(self.args)}"
                values = self._all("value", source.values)
            paths = self._all("path", source.values) if page else ""
            rows = []
            for table, day, when in parts:
                fill = {"table": table, "date": day, "when": when, "dimension": dimension}
                if source.dimension != PAGE:
                    rows.append(_DIMENSION_ROWS.format(values=values, **fill))
                    continue
                rows.append(_PAGE_ROWS.format(paths=paths, **fill))
                if rates:  # a page's bounces and durations: the visits entering by it
                    rows.append(_ENTRY_ROWS.format(values=values, **fill))
        key = {
            "": "NULL::text",
            "day": "date::text",
            "month": "date_trunc('month', date)::date::text",
            "value": "value",
        }[group]
        sums = ", ".join(f"sum({name})::bigint AS {name}" for name in SUMS)
        grouping = "" if group == "" else "GROUP BY 1"
        union = " UNION ALL ".join(rows)
        self.sql = f"SELECT {key} AS key, {sums} FROM ({union}) AS r {grouping}"

    def _range(self, first: date, last: date) -> str:
        self.args += [first, last]
        return f"date BETWEEN ${len(self.args) - 1} AND ${len(self.args)}"

    def _all(self, column: str, conditions: tuple[Filter, ...]) -> str:
        return " AND ".join(predicate(column, c, self.args) for c in conditions) or "true"

    def select(self, metrics: tuple[str, ...], *, order: str | None = None) -> str:
        return select_metrics(self.sql, metrics, self.args, order=order)


async def aggregate(
    conn: asyncpg.Pool | asyncpg.Connection, query: Query, period: Period, *, rollups: bool
) -> dict[str, Any]:
    """The metrics over the whole period (zeros where nothing was counted)."""
    statement = await reader(conn, query, period, rollups=rollups)
    row = await conn.fetchrow(statement.select(query.metrics), *statement.args)
    values = {m: None for m in query.metrics} if row is None else dict(row)
    return {m: _aggregate_value(m, values[m]) for m in query.metrics}


def _aggregate_value(metric: str, value: Any) -> Any:
    if value is None and metric != "time_on_page":
        return 0.0 if metric == "views_per_visit" else 0
    return value


async def timeseries(
    conn: asyncpg.Pool | asyncpg.Connection, query: Query, *, rollups: bool
) -> list[dict[str, Any]]:
    """A row per hour, day or month of the period, empty ones included, in order."""
    statement = await reader(conn, query, query.period, rollups=rollups)
    rows = await conn.fetch(statement.select(query.metrics), *statement.args)
    found = {row["key"]: row for row in rows}
    results = []
    for label in _buckets(query.period, query.interval):
        row = found.get(label)
        entry: dict[str, Any] = {"date": label}
        for metric in query.metrics:
            entry[metric] = _EMPTY_BUCKET.get(metric, 0) if row is None else row[metric]
        results.append(entry)
    return results


# A bucket without any figure as Plausible answers it now (contracts B.6): no duration.
_EMPTY_BUCKET = {"visit_duration": None, "views_per_visit": 0.0, "time_on_page": None}


def _buckets(period: Period, interval: str) -> list[str]:
    if interval == "hour":
        return [f"{period.first.isoformat()} {hour:02d}:00:00" for hour in range(24)]
    first, last = period.first.toordinal(), period.last.toordinal()
    if interval == "day":
        return [date.fromordinal(day).isoformat() for day in range(first, last + 1)]
    months = []
    month = period.first.replace(day=1)
    while month <= period.last:
        months.append(month.isoformat())
        month = month_end(month) + timedelta(days=1)
    return months


async def breakdown(
    conn: asyncpg.Pool | asyncpg.Connection, query: Query, *, rollups: bool
) -> list[dict[str, Any]]:
    """A page of the property's values, by the first metric (then value) as Plausible
    sorts them; the empty value is shown by its placeholder, or left out (B.6, B.7)."""
    assert query.property is not None
    statement = await reader(conn, query, query.period, rollups=rollups)
    if query.property in _EMPTY_LEFT_OUT:
        statement.sql = f"SELECT * FROM ({statement.sql}) AS all_keys WHERE key <> ''"
    order = next((m for m in query.metrics if m != "time_on_page"), query.metrics[0])
    sql = statement.select(query.metrics, order=order)
    statement.args[-2:] = [query.limit, (query.page - 1) * query.limit]
    return [
        _labels(query.property, row["key"]) | {m: row[m] for m in query.metrics}
        for row in await conn.fetch(sql, *statement.args)
    ]


def _labels(prop: str, key: str) -> dict[str, str]:
    """A breakdown row's value: a version comes with its browser or system."""
    if prop in VERSIONS:
        owner, _, version = key.partition(VERSION_SEPARATOR)
        return {
            VERSIONS[prop]: shown_value(f"visit:{VERSIONS[prop]}", owner),
            result_key(prop): shown_value(prop, version),
        }
    return {result_key(prop): shown_value(prop, key)}
