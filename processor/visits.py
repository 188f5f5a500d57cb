"""Visits: a visitor's events of one site and day with no gap longer than 30 minutes.

Pure code, no I/O. A visitor-day's visits are kept (visitor_days.visits) as summaries,
enough to count them exactly: first and last time, page views, events, interactions,
the first event's dimensions, the entry and exit pages, and the pages, event names and
custom properties seen. Events are merged into them in any order: `merge` gives the same
visits for the same set of events however they were batched or ordered, so that
redelivery, several writers and late events all end at the same figures. (Events of the
same microsecond are ordered by what they carry, so no order of arrival decides.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from common.constants import PAGE_VIEW
from processor.decode import COLUMNS, Row

# A gap longer than this between two events of a visitor starts a new visit (Plausible's).
VISIT_GAP_MICROS = 30 * 60 * 1_000_000

# What a visit keeps of its first event: Plausible's visit properties, in this order.
VISIT_DIMENSIONS = (
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
_DIMENSION_INDEXES = tuple(COLUMNS.index(name) for name in VISIT_DIMENSIONS)
_EVENT_TYPE, _PATH, _TIMESTAMP, _PROPS, _INTERACTIVE = (
    COLUMNS.index(name) for name in ("event_type", "path", "timestamp", "props", "interactive")
)


@dataclasses.dataclass(slots=True)
class Visit:
    start: int  # microseconds since the Unix epoch: the first event's time
    end: int  # the last event's
    pageviews: int
    events: int  # page views included
    interactions: int  # events other than page views that the tracker marks interactive
    dimensions: list[str]  # the first event's, in VISIT_DIMENSIONS order ("" for none)
    entry: int | None  # the first page view's time, None in a visit without one
    entry_page: str  # its path ("" without one)
    exit: int | None  # the last page view's time
    exit_page: str
    pages: dict[str, int]  # views per path
    names: dict[str, int]  # events per event name, page views aside
    props: dict[str, dict[str, int]]  # events per custom property key and value

    @property
    def bounce(self) -> int:
        return 1 if self.pageviews == 1 and self.interactions == 0 else 0

    @property
    def duration(self) -> int:
        return self.end - self.start

    def absorb(self, other: Visit) -> None:
        """Make this the summary of both visits' events (they are one visit now)."""
        if (other.start, other.dimensions) < (self.start, self.dimensions):
            self.dimensions = other.dimensions
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)
        self.pageviews += other.pageviews
        self.events += other.events
        self.interactions += other.interactions
        if other.entry is not None and (
            self.entry is None or (other.entry, other.entry_page) < (self.entry, self.entry_page)
        ):
            self.entry, self.entry_page = other.entry, other.entry_page
        if other.exit is not None and (
            self.exit is None or (other.exit, other.exit_page) > (self.exit, self.exit_page)
        ):
            self.exit, self.exit_page = other.exit, other.exit_page
        _add_counts(self.pages, other.pages)
        _add_counts(self.names, other.names)
        for key, values in other.props.items():
            _add_counts(self.props.setdefault(key, {}), values)

    def to_json(self) -> list[Any]:
        return [
            self.start,
            self.end,
            self.pageviews,
            self.events,
            self.interactions,
            self.dimensions,
            self.entry,
            self.entry_page,
            self.exit,
            self.exit_page,
            self.pages,
            self.names,
            self.props,
        ]


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, count in counts.items():
        into[key] = into.get(key, 0) + count


def visit_of(row: Row) -> Visit:
    """The one-event visit of a stored event."""
    micros = row[_TIMESTAMP]
    props_text = row[_PROPS]
    props = (
        {}
        if props_text is None
        else {key: {value: 1} for key, value in orjson.loads(props_text).items()}
    )
    dimensions = [row[index] or "" for index in _DIMENSION_INDEXES]
    name = row[_EVENT_TYPE]
    if name == PAGE_VIEW:
        path = row[_PATH]
        return Visit(micros, micros, 1, 1, 0, dimensions, micros, path, micros, path,
                     {path: 1}, {}, props)  # fmt: skip
    interaction = 1 if row[_INTERACTIVE] else 0
    return Visit(micros, micros, 0, 1, interaction, dimensions, None, "", None, "",
                 {}, {name: 1}, props)  # fmt: skip


def merge(visits: list[Visit], new: list[Visit]) -> list[Visit]:
    """The visits of all these events: `visits` and `new`, each separate visits in time
    order, joined wherever the gap between them is 30 minutes or less. Consumes both."""
    if not visits:
        result: list[Visit] = []
    elif new and new[0].start >= visits[-1].end:
        result = visits  # the usual case: new events extend or follow the last visit
    else:
        result = []
        new = sorted(visits + new, key=_start)
    for visit in new:
        if result and visit.start - result[-1].end <= VISIT_GAP_MICROS:
            result[-1].absorb(visit)
        else:
            result.append(visit)
    return result


def _start(visit: Visit) -> tuple[int, list[str]]:
    return (visit.start, visit.dimensions)


def decode_visits(data: bytes) -> list[Visit]:
    return [Visit(*item) for item in orjson.loads(data)]


def encode_visits(visits: list[Visit]) -> bytes:
    return orjson.dumps([visit.to_json() for visit in visits])
