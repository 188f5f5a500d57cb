"""The visits a shard's owner holds in memory, counted in place. Pure code, no I/O.

A shard's owner (docs/performance.md, "What the owner's state must keep true") keeps each
visitor-day with a recent event in memory, with its visits as counted so far, so that a
batch neither reads nor writes its row. No processor uses it yet (docs/performance.md). Most events take one of two small steps on
their visitor-day's last visit, whose changes to the rollups are counted directly:

- an event after it within 30 minutes extends it (its duration, bounce, exit page, and
  its page's visits and visitors where the page is new to the visit or the day);
- an event more than 30 minutes after it starts the next visit.

Anything else is counted the general way (counting.count_merge), as the visitor-day's
contribution after a merge less the one before: an event out of time order or of the
same microsecond as the last (merge orders those by what they carry), or one of a visit
folded already. Such a visitor-day's row is to be written in the same batch, so that the
table holds every event older than the visitor-day's newest one (a takeover recovers the
newer ones).

Visitor-days not in memory are left to the caller, who creates their rows or reads them
and hands them over (`add_created`, `add_read`). `fold` counts the visits of the visitor-days whose last
visit has ended into the dimension rollups, and gives their rows to write; `release`
forgets them once that has committed.
"""

from __future__ import annotations

import dataclasses

import orjson

from common.constants import PAGE_VIEW
from processor.counting import VisitorDay, count_fold, count_merge
from processor.days import LocalDays, VisitorKeys
from processor.decode import COLUMNS, Row
from processor.rollups import (
    PAGE,
    SITE,
    RollupChanges,
    eager_contribution,
)
from processor.visits import VISIT_GAP_MICROS, Visit, merge, visit_of

_SITE_ID, _EVENT_TYPE, _PATH, _USER_ID, _TIMESTAMP, _VISITOR_ID, _PROPS, _INTERACTIVE = (
    COLUMNS.index(name)
    for name in (
        "site_id",
        "event_type",
        "path",
        "user_id",
        "timestamp",
        "visitor_id",
        "props",
        "interactive",
    )
)
_SITE_KEY = (SITE, "")

# Visitor-days are found for folding by when their last visit ends, to the minute: a fold
# looks only at the minutes that have passed, not at everything held.
_DUE_BUCKET_MICROS = 60_000_000


@dataclasses.dataclass(slots=True)
class OpenDay:
    visits: list[Visit]  # separate visits in time order, as merge keeps them
    folded_until: int  # the dimension rollups hold the visits ended by then (0: none)
    due_bucket: int = -1  # the minute its last visit ends, where `_due` lists it

    @property
    def open_until(self) -> int:
        return self.visits[-1].end + VISIT_GAP_MICROS


@dataclasses.dataclass(slots=True)
class OwnedBatch:
    changes: RollupChanges
    # The batch's visits of visitor-days not in memory: to create, or to read and merge.
    unknown: dict[VisitorDay, list[Visit]]
    # Visitor-days counted the general way: their rows are written with the batch.
    rewritten: dict[VisitorDay, OpenDay]


@dataclasses.dataclass(slots=True)
class Folded:
    changes: RollupChanges
    days: dict[VisitorDay, OpenDay]  # to write with folded_until = until, then release
    until: int


class OpenVisits:
    def __init__(self) -> None:
        self.days: dict[VisitorDay, OpenDay] = {}
        # Minute -> visitor-days whose last visit ended in it when they were listed.
        self._due: dict[int, list[VisitorDay]] = {}

    def __len__(self) -> int:
        return len(self.days)

    def count(
        self,
        rows: list[Row],
        time_zones: dict[str, str],
        local_days: LocalDays,
        keys: VisitorKeys,
    ) -> OwnedBatch:
        """Count a batch of stored events: each event's page view and event on its site
        and page, and what it changes in the visits held."""
        changes = RollupChanges()
        unknown: dict[VisitorDay, list[Visit]] = {}
        general: dict[VisitorDay, list[Visit]] = {}
        days = self.days
        day_of, visitor_of = local_days.day, keys.key
        for row in rows:
            site = row[_SITE_ID]
            micros = row[_TIMESTAMP]
            day = day_of(time_zones.get(site), micros)
            changes.count_event(site, day, row)
            visitor = visitor_of(row[_USER_ID], row[_VISITOR_ID])
            if visitor is None:
                continue  # no visitor known: counted in the site's and page's figures only
            key = (site, day, visitor)
            held = days.get(key)
            if held is None:
                _append(unknown, key, visit_of(row))
                continue
            last = held.visits[-1]
            if (
                micros <= last.end
                or key in general
                or last.end + VISIT_GAP_MICROS <= held.folded_until
            ):
                _append(general, key, visit_of(row))
                continue
            figures = changes.days[(site, day)]
            if micros - last.end <= VISIT_GAP_MICROS:
                _extend(figures, held.visits, last, row, micros)
            else:
                _begin(figures, held.visits, row)
            self._list_due(key, held)
        rewritten = {}
        for key, new in general.items():
            held = days[key]
            new.sort(key=_start)
            held.visits = count_merge(changes, key, held.visits, held.folded_until, new)
            self._list_due(key, held)
            rewritten[key] = held
        for key, new in unknown.items():
            new.sort(key=_start)
            unknown[key] = merge([], new)
        return OwnedBatch(changes, unknown, rewritten)

    def add_created(self, batch: OwnedBatch, key: VisitorDay) -> None:
        """A visitor-day of `batch.unknown` that the batch created: all it has is new."""
        site, day, _ = key
        visits = batch.unknown[key]
        batch.changes.count_new(site, day, eager_contribution(visits))
        self._hold(key, visits, 0)

    def add_read(
        self, batch: OwnedBatch, key: VisitorDay, old: list[Visit] | None, folded_until: int
    ) -> list[Visit]:
        """A visitor-day of `batch.unknown` that existed: `old`, its visits as its row has
        them (None for a visitor counted before visits were kept), merged with the
        batch's, counted the general way; returns the visits to write back."""
        visits = count_merge(batch.changes, key, old, folded_until, batch.unknown[key])
        self._hold(key, visits, folded_until)
        return visits

    def _hold(self, key: VisitorDay, visits: list[Visit], folded_until: int) -> None:
        held = self.days[key] = OpenDay(visits, folded_until)
        self._list_due(key, held)

    def fold(self, until: int) -> Folded:
        """Count the visits of every visitor-day whose last visit ended by `until` into
        the dimension rollups, as the general way does (folded_contribution)."""
        changes = RollupChanges()
        folded: dict[VisitorDay, OpenDay] = {}
        last_bucket = until // _DUE_BUCKET_MICROS
        for bucket in sorted(b for b in self._due if b <= last_bucket):
            listed = self._due.pop(bucket)
            later = []
            for key in listed:
                held = self.days.get(key)
                if held is None or held.due_bucket != bucket or key in folded:
                    continue  # released, or listed again for a later minute
                if held.open_until > until:  # the minute `until` is in
                    later.append(key)
                    continue
                count_fold(changes, key, held.visits, held.folded_until, until)
                # At once, not at commit: an event that changes a visit folded now is
                # counted as one (the general way) by the batches counted meanwhile.
                held.folded_until = until
                folded[key] = held
            if later:
                self._due[bucket] = later
        return Folded(changes, folded, until)

    def release(self, folded: Folded) -> None:
        """Forget the folded visitor-days (their rows are committed) unless a batch has
        extended them since."""
        for key, held in folded.days.items():
            if self.days.get(key) is held and held.open_until <= folded.until:
                del self.days[key]

    def _list_due(self, key: VisitorDay, held: OpenDay) -> None:
        bucket = held.open_until // _DUE_BUCKET_MICROS
        if bucket != held.due_bucket:
            held.due_bucket = bucket
            listed = self._due.get(bucket)
            if listed is None:
                self._due[bucket] = [key]
            else:
                listed.append(key)


def _append(into: dict[VisitorDay, list[Visit]], key: VisitorDay, visit: Visit) -> None:
    same = into.get(key)
    if same is None:
        into[key] = [visit]
    else:
        same.append(visit)


def _extend(
    figures: dict[tuple[str, str], list[int]],
    visits: list[Visit],
    last: Visit,
    row: Row,
    micros: int,
) -> None:
    """The event joins the last visit, after its last event: the figures change by what
    the visit's summary changes (figures: [visitors, visits, page views, bounces,
    duration, events] by (dimension, value))."""
    site = figures[_SITE_KEY]
    bounced = last.pageviews == 1 and last.interactions == 0
    site[4] += micros - last.end
    last.end = micros
    last.events += 1
    name = row[_EVENT_TYPE]
    if name == PAGE_VIEW:
        path = row[_PATH]
        last.pageviews += 1
        if last.entry is None:
            last.entry, last.entry_page = micros, path
        last.exit, last.exit_page = micros, path
        views = last.pages.get(path)
        if views is None:
            last.pages[path] = 1
            _count_page_visit(figures, visits, path)
        else:
            last.pages[path] = views + 1
    else:
        last.names[name] = last.names.get(name, 0) + 1
        if row[_INTERACTIVE]:
            last.interactions += 1
        if row[_PROPS] is not None:
            for prop, value in orjson.loads(row[_PROPS]).items():
                values = last.props.setdefault(prop, {})
                values[value] = values.get(value, 0) + 1
    site[3] += (last.pageviews == 1 and last.interactions == 0) - bounced


def _begin(figures: dict[tuple[str, str], list[int]], visits: list[Visit], row: Row) -> None:
    """The event starts a visit after the last one."""
    visit = visit_of(row)
    visits.append(visit)
    site = figures[_SITE_KEY]
    site[1] += 1
    site[3] += visit.bounce
    if visit.pageviews:
        _count_page_visit(figures, visits, visit.exit_page)


def _count_page_visit(
    figures: dict[tuple[str, str], list[int]], visits: list[Visit], path: str
) -> None:
    """A page new to the last visit: one visit more, and one visitor more if it is new to
    the day too. (count_event has made the page's figures: it was viewed.)"""
    page = figures[(PAGE, path)]
    page[1] += 1
    for visit in visits[:-1]:
        if path in visit.pages:
            return
    page[0] += 1


def _start(visit: Visit) -> tuple[int, list[str]]:
    return (visit.start, visit.dimensions)
