"""The seven sums every source of figures gives per key, and the metrics derived from
them: one definition for the rollups (report/planner.py) and the raw events
(report/raw.py), so that both answer alike."""

from __future__ import annotations

from typing import Any

from report.query import Filter

# visitors, visits, page views, bounces, visit duration, events; rate_visits are the
# visits that bounce rate and visit duration are of (with a page filter or per page:
# the visits that entered by it, as Plausible counts them).
SUMS = ("visitors", "visits", "pageviews", "bounces", "duration_us", "events", "rate_visits")

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


def predicate(column: str, condition: Filter, args: list[Any]) -> str:
    """SQL for the filter on `column`, its values appended to `args` as parameters."""
    if condition.pattern is not None:
        args.append(condition.pattern)
        return f"{column} {'!~' if condition.negated else '~'} ${len(args)}"
    args.append(list(condition.values))
    test = f"{column} = ANY(${len(args)}::text[])"
    return f"NOT {test}" if condition.negated else test


def select_metrics(sums_sql: str, metrics: tuple[str, ...], args: list[Any], *,
                   order: str | None = None) -> str:  # fmt: skip
    """The metrics of each key of `sums_sql` (a statement giving `key` and SUMS);
    `order`: the metric a breakdown sorts by (then the key), and two parameters more for
    LIMIT and OFFSET, appended to `args` as None for the caller to set."""
    columns = ", ".join(f"{METRIC_SQL[m]} AS {m}" for m in metrics)
    sql = f"SELECT key, {columns} FROM ({sums_sql}) AS sums"
    if order is not None:
        args += [None, None]
        sql += (
            f" ORDER BY {METRIC_SQL[order]} DESC NULLS LAST, key"
            f" LIMIT ${len(args) - 1} OFFSET ${len(args)}"
        )
    return sql
