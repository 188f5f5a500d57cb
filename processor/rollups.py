"""What one batch changes in the rollups, and the statement that applies it.

Every rollup row is a key (site, day, dimension, value) and six figures: visitors,
visits, page views, bounces, visit duration and events. The dimension says which table
holds it: "" the site's day (daily_site_stats), "event:page" a page
(daily_site_path_counts), any other the per-dimension table (daily_dimension_stats).

A batch's change is worked out per visitor-day as what its visits contribute after the
batch minus what they contributed before (so a late event that joins two visits, or moves
an exit page, takes back exactly what it changes), plus, per event, the page views and
events of the site and the page (which count events of no known visitor too). Pure code.
"""

from __future__ import annotations

from typing import Any

from common.constants import PAGE_VIEW
from processor.decode import COLUMNS, Row
from processor.visits import VISIT_DIMENSIONS, VISIT_GAP_MICROS, Visit

SITE = ""
PAGE = "event:page"
ENTRY_PAGE = "visit:entry_page"
EXIT_PAGE = "visit:exit_page"
EVENT_NAME = "event:name"
PROPS_PREFIX = "event:props:"
_VISIT_PROPERTIES = tuple(f"visit:{name}" for name in VISIT_DIMENSIONS)

_SITE_ID, _EVENT_TYPE, _PATH = (COLUMNS.index(name) for name in ("site_id", "event_type", "path"))

# What one visitor-day's visits add to a (dimension, value): visits, page views, bounces,
# duration in microseconds, events. The visitor counts once for every key present.
# (Lists shared between keys: read, never changed.)
Contribution = dict[tuple[str, str], list[int]]
_SITE_KEY = (SITE, "")
_NO_FIGURES = [0, 0, 0, 0, 0]
# A visitor counted before visits were kept adds only their being counted.
VISITOR_ONLY: Contribution = {_SITE_KEY: _NO_FIGURES}


def eager_contribution(visits: list[Visit] | None) -> Contribution:
    """What a visitor-day's visits add to its site's day and pages, kept current by every
    batch. None: a visitor counted before visits were kept (sql/009), who contributes only
    their being counted already."""
    if visits is None:
        return VISITOR_ONLY
    if len(visits) == 1:  # the usual case, in one step
        visit = visits[0]
        result = dict.fromkeys([(PAGE, path) for path in visit.pages], _ONE_VISIT)
        result[_SITE_KEY] = [1, 0, visit.bounce, visit.duration, 0]
        return result
    result = {}
    for visit in visits:
        # Page views and events of the site and its pages are counted per event.
        _add(result, _SITE_KEY, [1, 0, visit.bounce, visit.duration, 0])
        for path in visit.pages:
            _add(result, (PAGE, path), _ONE_VISIT)
    return result


_ONE_VISIT = [1, 0, 0, 0, 0]


def folded_contribution(visits: list[Visit] | None, folded_until: int) -> Contribution:
    """What a visitor-day's folded visits add to the dimension rollups: those that had
    ended by `folded_until` (processor/folding.py)."""
    result: Contribution = {}
    for visit in visits or ():
        if visit.end + VISIT_GAP_MICROS > folded_until:
            continue
        whole = [1, visit.pageviews, visit.bounce, visit.duration, visit.events]
        keys = list(zip(_VISIT_PROPERTIES, visit.dimensions, strict=False))
        if visit.entry is not None:
            keys.append((ENTRY_PAGE, visit.entry_page))
            keys.append((EXIT_PAGE, visit.exit_page))
        parts = [(key, [1, 0, 0, 0, count]) for key, count in _event_counts(visit)]
        if not result:  # the first visit: each key once, sharing one list
            result = dict.fromkeys(keys, whole)
            result.update(parts)
            continue
        for key in keys:
            _add(result, key, whole)
        for key, figures in parts:
            _add(result, key, figures)
    return result


def _event_counts(visit: Visit) -> list[tuple[tuple[str, str], int]]:
    counts = [((EVENT_NAME, name), count) for name, count in visit.names.items()]
    if visit.pageviews:
        counts.append(((EVENT_NAME, PAGE_VIEW), visit.pageviews))
    for key, values in visit.props.items():
        dimension = PROPS_PREFIX + key
        counts.extend(((dimension, value), count) for value, count in values.items())
    return counts


def _add(into: Contribution, key: tuple[str, str], figures: list[int]) -> None:
    old = into.get(key)
    into[key] = figures if old is None else [a + b for a, b in zip(old, figures, strict=False)]


class RollupChanges:
    """The figures a batch adds to each rollup row, per site and day: [visitors, visits,
    page views, bounces, duration, events] by (dimension, value)."""

    def __init__(self) -> None:
        self.days: dict[tuple[str, int], dict[tuple[str, str], list[int]]] = {}

    def _day(self, site: str, day: int) -> dict[tuple[str, str], list[int]]:
        figures = self.days.get((site, day))
        if figures is None:
            figures = self.days[(site, day)] = {}
        return figures

    def count_event(self, site: str, day: int, row: Row) -> None:
        """A stored event's page view and event, on its site and page."""
        figures = self.days.get((site, day))
        if figures is None:
            figures = self.days[(site, day)] = {_SITE_KEY: [0, 0, 0, 0, 0, 0]}
        totals = figures[_SITE_KEY]
        totals[5] += 1
        if row[_EVENT_TYPE] == PAGE_VIEW:
            totals[2] += 1
            page_key = (PAGE, row[_PATH])
            page = figures.get(page_key)
            if page is None:
                figures[page_key] = [0, 0, 1, 0, 0, 0]
            else:
                page[2] += 1

    def count_new(self, site: str, day: int, contribution: Contribution) -> None:
        """Count a contribution where there was none (a new visitor-day, a first fold)."""
        figures = self._day(site, day)
        for key, (visits, pageviews, bounces, duration, events) in contribution.items():
            change = figures.get(key)
            if change is None:
                figures[key] = [1, visits, pageviews, bounces, duration, events]
            else:
                change[0] += 1
                change[1] += visits
                change[2] += pageviews
                change[3] += bounces
                change[4] += duration
                change[5] += events

    def count_difference(
        self, site: str, day: int, before: Contribution, after: Contribution
    ) -> None:
        """Count what `after` adds to the rollups beyond `before`."""
        figures = self._day(site, day)
        for key in after.keys() | before.keys():
            new, old = after.get(key), before.get(key)
            visitor = (new is not None) - (old is not None)
            new, old = new or _NO_FIGURES, old or _NO_FIGURES
            change = figures.get(key)
            if change is None:
                change = figures[key] = [0, 0, 0, 0, 0, 0]
            change[0] += visitor
            for index in range(5):
                change[index + 1] += new[index] - old[index]

    def new_visitors(self) -> int:
        return sum(figures.get(_SITE_KEY, _NO_FIGURES)[0] for figures in self.days.values())

    def records(self) -> list[tuple[Any, ...]]:
        """The changed rows, as copied to rollup_changes (APPLY takes them in key order)."""
        return [
            (site, day, dimension, value, *row)
            for (site, day), figures in self.days.items()
            for (dimension, value), row in figures.items()
            if any(row)
        ]


_FIGURES = ("visitors", "visits", "pageviews", "bounces", "duration_us", "events")

# Where a batch's (or a fold's) changes are copied to, for APPLY: binary COPY is the
# cheapest way in for thousands of rows (arrays of numbers cost the client far more).
# ON COMMIT DELETE ROWS empties them after every transaction; temporary, they write no WAL.
CREATE_CHANGE_TABLES = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS rollup_changes (
    site_id   text COLLATE "C" NOT NULL,
    day       integer NOT NULL,
    dimension text COLLATE "C" NOT NULL,
    value     text COLLATE "C" NOT NULL,
    {", ".join(f"{name} bigint NOT NULL" for name in _FIGURES)}
) ON COMMIT DELETE ROWS;
CREATE TEMPORARY TABLE IF NOT EXISTS visitor_day_writes (
    site_id    text COLLATE "C" NOT NULL,
    day        integer NOT NULL,
    visitor    uuid NOT NULL,
    visits     bytea,
    open_until bigint NOT NULL
) ON COMMIT DELETE ROWS
"""
ROLLUP_CHANGES = ("rollup_changes", ("site_id", "day", "dimension", "value", *_FIGURES))
VISITOR_DAY_WRITES = ("visitor_day_writes", ("site_id", "day", "visitor", "visits", "open_until"))

# Rows are taken in key order within each table. The writes not read by the final SELECT
# run after it, the later declared first (ExecPostprocessPlan): visitor_days (locked
# already), then dimensions, pages, and last the site's day, which every batch of the
# site touches, so that the locks others wait for are held the shortest.
APPLY = f"""
WITH changes AS MATERIALIZED (
    SELECT site_id, '1970-01-01'::date + day AS date, dimension, value,
        {", ".join(_FIGURES)}
    FROM rollup_changes
),
stats AS (
    INSERT INTO daily_site_stats AS t
        (site_id, date, unique_users, visits, total_views, bounces, duration_us, events)
    SELECT site_id, date, {", ".join(_FIGURES)} FROM changes WHERE dimension = '{SITE}'
    ORDER BY site_id, date
    ON CONFLICT (site_id, date) DO UPDATE
    SET unique_users = t.unique_users + excluded.unique_users,
        visits = t.visits + excluded.visits,
        total_views = t.total_views + excluded.total_views,
        bounces = t.bounces + excluded.bounces,
        duration_us = t.duration_us + excluded.duration_us,
        events = t.events + excluded.events
),
paths AS (
    INSERT INTO daily_site_path_counts AS t (site_id, date, path, visitors, visits, views)
    SELECT site_id, date, value, visitors, visits, pageviews FROM changes
    WHERE dimension = '{PAGE}'
    ORDER BY site_id, date, value
    ON CONFLICT (site_id, date, path) DO UPDATE
    SET visitors = t.visitors + excluded.visitors,
        visits = t.visits + excluded.visits,
        views = t.views + excluded.views
),
dimensions AS (
    INSERT INTO daily_dimension_stats AS t
        (site_id, date, dimension, value, {", ".join(_FIGURES)})
    SELECT * FROM changes WHERE dimension NOT IN ('{SITE}', '{PAGE}')
    ORDER BY site_id, date, dimension, value
    ON CONFLICT (site_id, date, dimension, value) DO UPDATE
    SET {", ".join(f"{name} = t.{name} + excluded.{name}" for name in _FIGURES)}
),
visitors AS (
    INSERT INTO visitor_days AS t (site_id, date, visitor, visits, open_until)
    SELECT site_id, '1970-01-01'::date + day, visitor, visits, open_until
    FROM visitor_day_writes
    ORDER BY 1, 2, 3
    ON CONFLICT (site_id, date, visitor) DO UPDATE
    SET visits = excluded.visits, open_until = excluded.open_until
)
SELECT 1
"""

# The batch's visitor-days new to the table, inserted with their visits (as copied to
# visitor_day_writes): returns which were new. The others exist already, or a writer
# inserting them now commits first (the insert waits for it): LOCK_VISITOR_DAYS takes those.
CREATE_VISITOR_DAYS = """
WITH created AS (
    INSERT INTO visitor_days AS t (site_id, date, visitor, visits, open_until)
    SELECT site_id, '1970-01-01'::date + day, visitor, visits, open_until
    FROM visitor_day_writes
    ORDER BY 1, 2, 3
    ON CONFLICT (site_id, date, visitor) DO NOTHING
    RETURNING site_id, date, visitor
),
-- What was not created is written (when it is) by APPLY, after the lock.
cleared AS (
    DELETE FROM visitor_day_writes
)
SELECT site_id, date - '1970-01-01'::date AS day, visitor::text FROM created
"""

# The visitor-days the batch adds to, locked in key order until commit (so that no other
# writer or fold counts the same visitor at the same time), with their visits so far.
LOCK_VISITOR_DAYS = """
SELECT site_id, date - '1970-01-01'::date AS day, visitor::text, visits, folded_until
FROM visitor_days
WHERE (site_id, date, visitor) IN (
    SELECT site_id, '1970-01-01'::date + day, visitor
    FROM unnest($1::text[], $2::int[], $3::uuid[]) AS v(site_id, day, visitor)
)
ORDER BY site_id, date, visitor
FOR UPDATE
"""

# These visitor-days ($1-$3), locked, skipping any that a batch or another fold holds
# now, as they were; those whose visits have all ended by $4 and are not folded are
# marked folded until $4 (the caller adds them to the rollups in the same transaction).
FOLD_DUE = """
WITH taken AS (
    SELECT site_id, date, visitor, visits, open_until, folded_until
    FROM visitor_days
    WHERE (site_id, date, visitor) IN (
        SELECT site_id, '1970-01-01'::date + day, visitor
        FROM unnest($1::text[], $2::int[], $3::uuid[]) AS v(site_id, day, visitor)
    )
    ORDER BY site_id, date, visitor
    FOR UPDATE SKIP LOCKED
),
marked AS (
    UPDATE visitor_days AS v SET folded_until = $4
    FROM taken AS t
    WHERE (v.site_id, v.date, v.visitor) = (t.site_id, t.date, t.visitor)
        AND t.folded_until < t.open_until AND t.open_until <= $4
)
SELECT site_id, date - '1970-01-01'::date AS day, visitor::text, visits, open_until,
    folded_until
FROM taken
"""

# Visitor-days of days from $1 on with visits that ended by $2 and are not folded yet:
# what no processor remembers as due (one stopped, or had too many to remember).
FIND_DUE = """
SELECT site_id, date - '1970-01-01'::date AS day, visitor::text, open_until
FROM visitor_days
WHERE date >= '1970-01-01'::date + $1::int AND folded_until < open_until AND open_until <= $2
"""
