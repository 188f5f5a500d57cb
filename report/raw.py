"""Answering a query from the raw events: what the rollups cannot answer (filters on
two properties, several values of one, hours) or do not hold (COUNT_VISITS off).

The visits are rebuilt in SQL by the definitions of docs/metrics.md, as the processor
builds them: a visitor's events of one local day, split where 30 minutes pass without
one; the visit's properties those of its first event (ties by the properties, in
VISIT_DIMENSIONS order), its entry page its first page view (ties by path), its exit
page its last. The statement then gives the same seven sums per key as a rollup read
(report/planner.py Statement), so that metrics, order and pages are derived once.

How filters combine (as the rollups count one of them):
- visit properties choose visits;
- event:page (page views of the path), event:name and event:props:* choose events: a
  visit counts when it has one, and only those events count as its page views and events;
- with a page filter, bounce rate and duration are those of the counted visits that
  entered by a page it allows.
An event without a visitor (a back end's, without a user) is in no visit: it counts in
the site's and pages' page views and events only, and only without other filters.

It reads every event of the period's days: the cost grows with the site's traffic
(docs/api.md), and it sees only the events that retention keeps.
"""

from __future__ import annotations

from typing import Any

from common.constants import PAGE_VIEW
from processor.rollups import ENTRY_PAGE, EVENT_NAME, EXIT_PAGE, PAGE, PROPS_PREFIX
from processor.visits import VISIT_DIMENSIONS
from report.query import HOSTNAME, Filter, Period
from report.sums import predicate, select_metrics

_VISIT_COLUMNS = {f"visit:{name}": name for name in VISIT_DIMENSIONS} | {
    ENTRY_PAGE: "entry_page",
    EXIT_PAGE: "exit_page",
}
# Plausible breaks versions down by browser (or system) and version together.
VERSIONS = {"visit:browser_version": "browser", "visit:os_version": "os"}
VERSION_SEPARATOR = "\x1f"
NO_PROPERTY = "(none)"
_DIMENSIONS = ", ".join(f"coalesce(e.{name}, '') AS {name}" for name in VISIT_DIMENSIONS)
_FIRST_ORDER = ", ".join(VISIT_DIMENSIONS)

# $1 site, $2 time zone, $3 and $4 the first and last local day. `numbered`: every event
# of those days with its local day, visitor, and visit number (NULL without a visitor).
_VISITS = f"""
WITH ev AS (
    SELECT (e."timestamp" AT TIME ZONE $2) AS local, e."timestamp" AS at,
        (extract(epoch FROM e."timestamp") * 1000000)::bigint AS micros,
        visitor_key(e.user_id, e.visitor_id) AS visitor, e.event_type, e.path, e.props,
        e.interactive, coalesce(e.hostname, '') AS hostname, {_DIMENSIONS}
    FROM events AS e
    WHERE e.site_id = $1
        AND e."timestamp" >= $3::date::timestamp AT TIME ZONE $2
        AND e."timestamp" < ($4::date + 1)::timestamp AT TIME ZONE $2
),
starts AS (
    SELECT ev.*, local::date AS day,
        CASE WHEN visitor IS NULL THEN NULL
            WHEN micros - lag(micros) OVER w <= {30 * 60 * 1_000_000} THEN 0 ELSE 1 END AS starts
    FROM ev WINDOW w AS (PARTITION BY local::date, visitor ORDER BY micros)
),
numbered AS (
    SELECT starts.*, event_type = '{PAGE_VIEW}' AS pageview,
        sum(starts) OVER (PARTITION BY day, visitor ORDER BY micros
                          ROWS UNBOUNDED PRECEDING) AS visit_no
    FROM starts
),
firsts AS (
    SELECT DISTINCT ON (day, visitor, visit_no) day, visitor, visit_no, {_FIRST_ORDER}
    FROM numbered WHERE visitor IS NOT NULL
    ORDER BY day, visitor, visit_no, micros, {_FIRST_ORDER}
),
figures AS (
    SELECT day, visitor, visit_no, min(local) AS started,
        max(micros) - min(micros) AS duration_us,
        count(*) FILTER (WHERE pageview) = 1
            AND count(*) FILTER (WHERE NOT pageview AND interactive) = 0 AS bounce,
        coalesce((array_agg(path ORDER BY micros, path) FILTER (WHERE pageview))[1], '')
            AS entry_page,
        coalesce((array_agg(path ORDER BY micros DESC, path DESC) FILTER (WHERE pageview))[1], '')
            AS exit_page
    FROM numbered WHERE visitor IS NOT NULL
    GROUP BY day, visitor, visit_no
),
visits AS (
    SELECT * FROM figures JOIN firsts USING (day, visitor, visit_no)
)"""


class RawStatement:
    """The seven sums per key (report/planner.py) of a query read from raw events."""

    def __init__(
        self,
        site_id: str,
        time_zone: str,
        period: Period,
        filters: tuple[Filter, ...],
        group: str,
    ):
        """`group`: "" (one row), "hour", "day", "month", or a property."""
        self.args: list[Any] = [site_id, time_zone, period.first, period.last]
        visit_filters = [f for f in filters if f.property in _VISIT_COLUMNS]
        event_filters = [f for f in filters if f.property not in _VISIT_COLUMNS]
        page_filters = [f for f in filters if f.property == PAGE]
        visit_where = " AND ".join(
            self._predicate(f"v.{_VISIT_COLUMNS[f.property]}", f) for f in visit_filters
        )
        event_where = " AND ".join(self._event_predicate(f) for f in event_filters)
        # Bounce rate and duration with a page filter: the visits entering by such a page.
        rate_ok = " AND ".join(self._predicate("v.entry_page", f) for f in page_filters) or "true"
        by_event = group in (PAGE, EVENT_NAME) or group.startswith(PROPS_PREFIX)
        self._prop = (
            self._literal(group[len(PROPS_PREFIX) :]) if group.startswith(PROPS_PREFIX) else ""
        )
        # Events without a visitor: only in the site's and pages' figures, unfiltered.
        anonymous = all(f.property == PAGE for f in filters) and (
            group in ("", "hour", "day", "month", PAGE)
        )
        # The optional parts, each a line of SQL or nothing.
        in_matching_visits = (
            f"AND (v.day, v.visitor, v.visit_no) IN (SELECT day, visitor, visit_no"
            f" FROM numbered AS n WHERE n.visitor IS NOT NULL AND {event_where})"
            if event_where
            else ""
        )
        page_views_only = "AND n.pageview" if group == PAGE else ""
        event_key = self._event_key(group)
        events_without_visitor = (
            f"UNION ALL SELECT n.*, {event_key} AS key FROM numbered AS n"
            f" WHERE n.visitor IS NULL AND {event_where or 'true'} {page_views_only}"
            if anonymous
            else ""
        )
        counted_visits = f"""
counted_visits AS (
    SELECT v.*, {rate_ok} AS rate_ok FROM visits AS v
    WHERE {visit_where or "true"} {in_matching_visits}
)"""
        counted_events = f"""
counted_events AS (
    SELECT n.*, {event_key} AS key FROM numbered AS n
    JOIN counted_visits AS v USING (day, visitor, visit_no)
    WHERE {event_where or "true"} {page_views_only}
    {events_without_visitor}
)"""
        event_sums = """
event_sums AS (
    SELECT key,
        count(DISTINCT (day, visitor)) FILTER (WHERE visitor IS NOT NULL) AS visitors,
        count(DISTINCT (day, visitor, visit_no)) FILTER (WHERE visitor IS NOT NULL)
            AS event_visits,
        count(*) FILTER (WHERE pageview) AS pageviews, count(*) AS events
    FROM counted_events GROUP BY key
)"""
        visit_sums = f"""
visit_sums AS (
    SELECT {self._visit_key(group)} AS key, count(*) AS visits,
        count(*) FILTER (WHERE rate_ok AND bounce) AS bounces,
        coalesce(sum(duration_us) FILTER (WHERE rate_ok), 0) AS duration_us,
        count(*) FILTER (WHERE rate_ok) AS rate_visits
    FROM counted_visits AS v
    {"WHERE false" if by_event and group != PAGE else ""}
    GROUP BY 1
)"""
        visits = "coalesce(e.event_visits, 0)" if by_event else "coalesce(s.visits, 0)"
        self.sql = f"""{_VISITS},
{counted_visits},
{counted_events},
{event_sums},
{visit_sums}
SELECT key, coalesce(e.visitors, 0) AS visitors, {visits} AS visits,
    coalesce(e.pageviews, 0) AS pageviews, coalesce(s.bounces, 0) AS bounces,
    coalesce(s.duration_us, 0) AS duration_us, coalesce(e.events, 0) AS events,
    coalesce(s.rate_visits, 0) AS rate_visits
FROM event_sums AS e FULL JOIN visit_sums AS s USING (key)
{"WHERE e.key IS NOT NULL" if by_event else ""}"""

    def _predicate(self, column: str, condition: Filter) -> str:
        return predicate(column, condition, self.args)

    def select(self, metrics: tuple[str, ...], *, order: str | None = None) -> str:
        return select_metrics(self.sql, metrics, self.args, order=order)

    def _event_predicate(self, condition: Filter) -> str:
        if condition.property == PAGE:
            return f"(n.pageview AND {self._predicate('n.path', condition)})"
        if condition.property == EVENT_NAME:
            return self._predicate("n.event_type", condition)
        if condition.property == HOSTNAME:
            return self._predicate("n.hostname", condition)
        key = self._literal(condition.property[len(PROPS_PREFIX) :])
        return self._predicate(_property_value(key), condition)

    def _literal(self, text: str) -> str:
        self.args.append(text)
        return f"${len(self.args)}::text"

    def _event_key(self, group: str) -> str:
        """What an event counts under: its time, page, name or property, or its visit's."""
        if group in ("", "hour", "day", "month"):
            return _time_key(group, "n", "n.local")
        if group == PAGE:
            return "n.path"
        if group == EVENT_NAME:
            return "n.event_type"
        if group.startswith(PROPS_PREFIX):
            return _property_value(self._prop)
        return _visit_property(group)

    def _visit_key(self, group: str) -> str:
        """What a visit counts under: its start, entry page or property; NULL where the
        group is events' only (names, properties)."""
        if group in ("", "hour", "day", "month"):
            return _time_key(group, "v", "v.started")
        if group == PAGE:
            return "v.entry_page"
        if group in _VISIT_COLUMNS:
            return _visit_property(group)
        return "NULL::text"


def _property_value(key: str) -> str:
    """An event's custom property `key` (a parameter), "(none)" without it (Plausible's)."""
    return f"coalesce(n.props ->> {key}, '{NO_PROPERTY}')"


def _time_key(group: str, alias: str, moment: str) -> str:
    if group == "hour":
        return f"to_char(date_trunc('hour', {moment}), 'YYYY-MM-DD HH24:00:00')"
    if group == "day":
        return f"{alias}.day::text"
    if group == "month":
        return f"date_trunc('month', {alias}.day)::date::text"
    return "''::text"  # one key, the same on both sides of the join


def _visit_property(group: str) -> str:
    if group in VERSIONS:  # a version is a browser's or a system's: both make the key
        return f"(v.{VERSIONS[group]} || '{VERSION_SEPARATOR}' || v.{_VISIT_COLUMNS[group]})"
    return f"v.{_VISIT_COLUMNS[group]}"
