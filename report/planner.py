"""Which rollup answers a Stats API query, and the one statement that reads it.

Every rollup row (docs/metrics.md) carries the same six sums: visitors, visits, page
views, bounces, visit duration and events, per site and local day. A query picks its
rows (the site's, a page's, or a dimension value's), adds them up per day, month, value
or over the whole period, and derives its metrics from the sums in SQL, where a
breakdown also sorts and pages them.

What the rollups answer exactly, and so what is planned:
- no filter: the site's rows (a breakdown: its property's rows);
- one filter `property==value` in aggregate and timeseries: that value's rows;
- in a breakdown, any filters on the property broken down by (they choose its rows).
Other filters need the visits themselves (two properties at once, or several values of
one, whose visitors cannot be added up): they are answered 400, saying so.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

import asyncpg

from common.constants import PAGE_VIEW
from processor.rollups import ENTRY_PAGE, EVENT_NAME, PAGE, PROPS_PREFIX
from report.query import Filter, Period, Query, QueryError

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

_SUMS = ("visitors", "visits", "pageviews", "bounces", "duration_us", "events", "rate_visits")

# The rows of each kind of source: $1 the site, $2 and $3 the first and last day;
# `{dimension}` and `{values}` (a predicate on the column `value`) are filled in.
# rate_visits are the visits that bounce rate and visit duration are of: for a page,
# the visits that entered by it (as Plausible counts them with a page filter).
_SITE_ROWS = """
SELECT date, '' AS value, unique_users AS visitors, visits, total_views AS pageviews,
    bounces, duration_us, events, visits AS rate_visits
FROM daily_site_stats WHERE site_id = $1 AND date BETWEEN $2 AND $3
"""
_DIMENSION_ROWS = """
SELECT date, value, visitors, visits, pageviews, bounces, duration_us, events,
    visits AS rate_visits
FROM daily_dimension_stats
WHERE site_id = $1 AND date BETWEEN $2 AND $3 AND dimension = {dimension} AND {values}
"""
_PAGE_ROWS = """
SELECT date, value, visitors, visits, views AS pageviews, 0 AS bounces,
    0 AS duration_us, 0 AS events, 0 AS rate_visits
FROM daily_site_path_counts AS p, LATERAL (SELECT p.path AS value) AS v
WHERE site_id = $1 AND date BETWEEN $2 AND $3 AND {values}
UNION ALL
SELECT date, value, 0, 0, 0, bounces, duration_us, 0, visits
FROM daily_dimension_stats
WHERE site_id = $1 AND date BETWEEN $2 AND $3 AND dimension = {dimension} AND {values}
"""

# Each metric from the sums (Plausible's definitions, contracts D). Bounce rate and visit
# duration round half to even, as ClickHouse rounds floats; views per visit is rounded
# from the exact quotient, half away from zero (1.125 is 1.13). time_on_page is not
# kept: null, as Plausible may answer it.
METRIC_SQL = {
    "visitors": "visitors",
    "visits": "visits",
    "pageviews": "pageviews",
    "events": "events",
    "bounce_rate": "CASE WHEN rate_visits > 0"
    " THEN round(100 * bounces::float8 / rate_visits)::bigint ELSE 0 END",
    "visit_duration": "CASE WHEN rate_visits > 0"
    " THEN round(duration_us::float8 / (rate_visits * 1e6))::bigint ELSE 0 END",
    "views_per_visit": "CASE WHEN visits > 0"
    " THEN round(pageviews::numeric / visits, 2)::float8 ELSE 0 END",
    "time_on_page": "NULL::bigint",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """The rows a query adds up: a dimension ("" the site's), and which of its values."""

    dimension: str
    values: tuple[Filter, ...] = ()  # all must hold


def plan(query: Query) -> Source:
    if query.property is not None:
        others = [f for f in query.filters if f.property != query.property]
        if others:
            raise _unanswerable(others[0])
        return Source(query.property, tuple(_stored(f) for f in query.filters))
    if not query.filters:
        return Source("")
    first = query.filters[0]
    if len(query.filters) > 1 or first.negated or first.pattern or len(first.values) != 1:
        raise _unanswerable(first)
    return Source(first.property, (_stored(first),))


def _unanswerable(example: Filter) -> QueryError:
    return QueryError(
        "filters",
        "unsupported_filters",
        "This server answers from daily rollups: an aggregate or timeseries takes at most "
        "one filter, property==value with one value; a breakdown takes filters on the "
        f"property it breaks down by only (not answerable here: `{example.property}`).",
    )


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


def result_key(prop: str) -> str:
    """What a breakdown row calls its value: the property without its prefix."""
    if prop.startswith(PROPS_PREFIX):
        return prop[len(PROPS_PREFIX) :]
    return prop.partition(":")[2]


class Statement:
    """The SQL and arguments that add up a source's rows over a period."""

    def __init__(self, site_id: str, source: Source, period: Period, group: str):
        """`group`: "" (one row), "day", "month" or "value"."""
        self.args: list[Any] = [site_id, period.first, period.last]
        predicate = " AND ".join(self._predicate(f) for f in source.values) or "true"
        if source.dimension == "":
            rows = _SITE_ROWS
        else:
            # A page's bounces and durations are those of the visits entering by it.
            self.args.append(ENTRY_PAGE if source.dimension == PAGE else source.dimension)
            template = _PAGE_ROWS if source.dimension == PAGE else _DIMENSION_ROWS
            rows = template.format(dimension=f"${len(self.args)}", values=predicate)
        key = {
            "": "NULL::text",
            "day": "date::text",
            "month": "date_trunc('month', date)::date::text",
            "value": "value",
        }[group]
        sums = ", ".join(f"sum({name})::bigint AS {name}" for name in _SUMS)
        grouping = "" if group == "" else "GROUP BY 1"
        self._sql = f"SELECT {key} AS key, {sums} FROM ({rows}) AS r {grouping}"
        if group == "value" and source.dimension in _EMPTY_LEFT_OUT:
            self._sql += " HAVING value <> ''"

    def _predicate(self, condition: Filter) -> str:
        if condition.pattern is not None:
            self.args.append(condition.pattern)
            operator = "!~" if condition.negated else "~"
            return f"value {operator} ${len(self.args)}"
        self.args.append(list(condition.values))
        return f"{'NOT ' if condition.negated else ''}value = ANY(${len(self.args)}::text[])"

    def select(self, metrics: tuple[str, ...], *, order: str | None = None) -> str:
        """The metrics of each group; `order`: the metric a breakdown sorts by."""
        columns = ", ".join(f"{METRIC_SQL[m]} AS {m}" for m in metrics)
        sql = f"SELECT key, {columns}, rate_visits FROM ({self._sql}) AS sums"
        if order is not None:
            sql += f" ORDER BY {METRIC_SQL[order]} DESC NULLS LAST, key"
            self.args += [None, None]
            sql += f" LIMIT ${len(self.args) - 1} OFFSET ${len(self.args)}"
        return sql


async def aggregate(
    conn: asyncpg.Pool | asyncpg.Connection, query: Query, period: Period
) -> dict[str, Any]:
    """The metrics over the whole period (zeros where nothing was counted)."""
    statement = Statement(query.site_id, plan(query), period, "")
    row = await conn.fetchrow(statement.select(query.metrics), *statement.args)
    assert row is not None
    return {m: _aggregate_value(m, row[m]) for m in query.metrics}


def _aggregate_value(metric: str, value: Any) -> Any:
    if value is None and metric != "time_on_page":
        return 0.0 if metric == "views_per_visit" else 0
    return value


async def timeseries(conn: asyncpg.Pool | asyncpg.Connection, query: Query) -> list[dict[str, Any]]:
    """A row per day or month of the period, empty ones included, in order."""
    statement = Statement(query.site_id, plan(query), query.period, query.interval)
    found = {
        row["key"]: row
        for row in await conn.fetch(statement.select(query.metrics), *statement.args)
    }
    results = []
    for bucket in _buckets(query.period, query.interval):
        label = bucket.isoformat()
        row = found.get(label)
        entry: dict[str, Any] = {"date": label}
        for metric in query.metrics:
            if row is None:
                entry[metric] = _EMPTY_BUCKET.get(metric, 0)
            else:
                entry[metric] = row[metric]
        results.append(entry)
    return results


# A bucket without any figure as Plausible answers it now (contracts B.6): no duration.
_EMPTY_BUCKET = {"visit_duration": None, "views_per_visit": 0.0, "time_on_page": None}


def _buckets(period: Period, interval: str) -> list[date]:
    if interval == "day":
        return [
            date.fromordinal(day)
            for day in range(period.first.toordinal(), period.last.toordinal() + 1)
        ]
    months = []
    month = period.first.replace(day=1)
    while month <= period.last:
        months.append(month)
        month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return months


async def breakdown(conn: asyncpg.Pool | asyncpg.Connection, query: Query) -> list[dict[str, Any]]:
    """A page of the property's values, by the first metric (then value) as Plausible
    sorts them."""
    assert query.property is not None
    statement = Statement(query.site_id, plan(query), query.period, "value")
    order = next((m for m in query.metrics if m != "time_on_page"), query.metrics[0])
    sql = statement.select(query.metrics, order=order)
    statement.args[-2:] = [query.limit, (query.page - 1) * query.limit]
    key = result_key(query.property)
    return [
        {key: shown_value(query.property, row["key"])} | {m: row[m] for m in query.metrics}
        for row in await conn.fetch(sql, *statement.args)
    ]
