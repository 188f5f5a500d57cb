"""Counting a batch of stored events into its rollup changes: pure code, used by store.py
between the statements that create or lock the batch's visitor-days and the one that
applies the changes."""

from __future__ import annotations

import dataclasses
from collections.abc import Container

from processor.days import LocalDays, VisitorKeys
from processor.decode import COLUMNS, Row
from processor.rollups import (
    RollupChanges,
    eager_contribution,
    folded_contribution,
)
from processor.visits import VISIT_GAP_MICROS, Visit, decode_visits, encode_visits, merge, visit_of

_SITE_ID, _USER_ID, _TIMESTAMP, _VISITOR_ID = (
    COLUMNS.index(name) for name in ("site_id", "user_id", "timestamp", "visitor_id")
)

VisitorDay = tuple[str, int, str]  # site_id, day, visitor (UUID text)


@dataclasses.dataclass(slots=True)
class VisitorDayRows:
    """visitor_days rows to write, as the records copied to visitor_day_writes."""

    records: list[tuple[str, int, str, bytes | None, int]] = dataclasses.field(default_factory=list)

    def add(self, key: VisitorDay, visits: list[Visit]) -> None:
        site, day, visitor = key
        open_until = visits[-1].end + VISIT_GAP_MICROS
        self.records.append((site, day, visitor, encode_visits(visits), open_until))

    def keys(self) -> list[VisitorDay]:
        return [record[:3] for record in self.records]

    def open_until(self) -> list[int]:
        return [record[4] for record in self.records]


@dataclasses.dataclass(slots=True)
class BatchCount:
    changes: RollupChanges
    # Each visitor-day's new events as visits in time order: merged where the visitor-day
    # may be new (its row is in `fresh`), one an event where it is known to exist.
    visitor_days: dict[VisitorDay, list[Visit]]
    # The visitor-days as they are if new to the table (`visitor_days`, encoded).
    fresh: VisitorDayRows

    def count_created(self, created: set[VisitorDay]) -> None:
        """Count the visitor-days that the batch created: all they have is theirs."""
        for key in created:
            site, day, _ = key
            self.changes.count_new(site, day, eager_contribution(self.visitor_days[key]))

    def count_existing(self, locked: list[tuple[VisitorDay, bytes | None, int]]) -> VisitorDayRows:
        """Merge the new visits into the visitor-days that existed (`locked`: each key,
        its visits so far, None for a visitor counted before visits were kept, and until
        when they are folded), count the difference, and return the rows to write."""
        rows = VisitorDayRows()
        for key, data, folded_until in locked:
            old = None if data is None else decode_visits(data)
            rows.add(key, count_merge(self.changes, key, old, folded_until, self.visitor_days[key]))
        return rows


def count_merge(
    changes: RollupChanges,
    key: VisitorDay,
    old: list[Visit] | None,
    folded_until: int,
    new: list[Visit],
) -> list[Visit]:
    """Merge `new` (separate visits in time order) into a visitor-day's `old` visits (None
    for a visitor counted before visits were kept), count what the visits add after less
    what they added before, and return them. Consumes both."""
    site, day, _ = key
    before = eager_contribution(old)
    # Folded visits that late events change, or late events' visits that ended before
    # the fold (docs/metrics.md), change the dimension rollups now.
    folded_before = folded_contribution(old, folded_until) if folded_until else None
    visits = merge(old or [], new)
    changes.count_difference(site, day, before, eager_contribution(visits))
    if folded_before is not None:
        changes.count_difference(
            site, day, folded_before, folded_contribution(visits, folded_until)
        )
    return visits


def count_fold(
    changes: RollupChanges, key: VisitorDay, visits: list[Visit], folded_until: int, until: int
) -> None:
    """Count a visitor-day's visits that ended by `until` into the dimension rollups, less
    those counted at its last fold (until `folded_until`, 0 for none)."""
    site, day, _ = key
    after = folded_contribution(visits, until)
    if folded_until:
        changes.count_difference(site, day, folded_contribution(visits, folded_until), after)
    else:  # the usual case: the first fold of the visitor-day
        changes.count_new(site, day, after)


def count_events(
    rows: list[Row],
    time_zones: dict[str, str],
    local_days: LocalDays,
    keys: VisitorKeys,
    known: Container[VisitorDay] = (),
) -> BatchCount:
    """The per-event part of a batch's count, done before any row is locked: each event's
    local day, its page view and event on the site and page, and its visitor-day's visits
    among the batch's events; and, for the visitor-days not `known` to exist, the rows
    they would be as new ones."""
    changes = RollupChanges()
    events: dict[VisitorDay, list[Visit]] = {}
    day_of, visitor_of = local_days.day, keys.key
    for row in rows:
        site = row[_SITE_ID]
        day = day_of(time_zones.get(site), row[_TIMESTAMP])
        changes.count_event(site, day, row)
        visitor = visitor_of(row[_USER_ID], row[_VISITOR_ID])
        if visitor is None:
            continue  # no visitor known: counted in the site's and page's figures only
        key = (site, day, visitor)
        same = events.get(key)
        if same is None:
            events[key] = [visit_of(row)]
        else:
            same.append(visit_of(row))
    fresh = VisitorDayRows()
    for key in sorted(events):
        new = events[key]
        if len(new) > 1:
            new.sort(key=_start)
        if key not in known:
            merged = events[key] = merge([], new)
            fresh.add(key, merged)
    return BatchCount(changes, events, fresh)


def _start(visit: Visit) -> int:
    return visit.start
