"""Unit tests of the owner's visits in memory (processor/open_visits.py), against the
definitions applied by tests/rollup_answers.py to the same events: whatever the
batching, the order of arrival, the folds between batches, and visitor-days released and
read back from their rows. No I/O: a dict stands in for `visitor_days`."""

from __future__ import annotations

import itertools
import random
import uuid
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.counting import VisitorDay
from processor.days import LocalDays, VisitorKeys
from processor.decode import COLUMNS, Row, decode_entries
from processor.folding import EVERYTHING
from processor.open_visits import OpenVisits
from processor.rollups import PAGE, SITE, RollupChanges
from processor.visits import VISIT_GAP_MICROS, Visit, decode_visits, encode_visits
from tests import visits_dataset
from tests.rollup_answers import EPOCH, differences, expected_rollups

ZONES = {site: zone for site, zone in visits_dataset.SITES.items() if zone is not None}
_TIMESTAMP = COLUMNS.index("timestamp")


def stored_rows(visitors: int, seed: int) -> list[Row]:
    """The dataset's events as the store keeps them: decoded, each (site, event_id) once."""
    payloads = visits_dataset.generate(visitors, seed)
    rows = decode_entries([(b"%d-0" % n, visits_dataset.stream_fields(p)) for n, p in
                           enumerate(payloads)]).rows  # fmt: skip
    return list({(row[1], row[0]): row for row in rows}.values())


def as_stored_events(rows: list[Row]) -> list[dict[str, Any]]:
    events = []
    for row in rows:
        event = dict(zip(COLUMNS, row, strict=False))
        event["timestamp"] = EPOCH + timedelta(microseconds=event["timestamp"])
        if event["visitor_id"] is not None:
            event["visitor_id"] = uuid.UUID(event["visitor_id"])
        events.append(event)
    return events


class Owner:
    """An owner's batches without PostgreSQL: the rows it writes kept in a dict."""

    def __init__(self) -> None:
        self.visits = OpenVisits()
        self.table: dict[VisitorDay, tuple[bytes, int]] = {}  # visits, folded_until
        self.totals: list[RollupChanges] = []
        self.local_days, self.keys = LocalDays(), VisitorKeys()
        self.read_back = 0

    def store(self, rows: list[Row]) -> None:
        batch = self.visits.count(rows, ZONES, self.local_days, self.keys)
        for key in sorted(batch.unknown):
            row = self.table.get(key)
            if row is None:
                self.visits.add_created(batch, key)
                self.table[key] = (encode_visits(batch.unknown[key]), 0)
            else:
                self.read_back += 1
                visits = self.visits.add_read(batch, key, decode_visits(row[0]), row[1])
                self.table[key] = (encode_visits(visits), row[1])
        for key, held in batch.rewritten.items():
            self.table[key] = (encode_visits(held.visits), held.folded_until)
        self.totals.append(batch.changes)

    def fold(self, until: int) -> int:
        folded = self.visits.fold(until)
        for key, held in folded.days.items():
            self.table[key] = (encode_visits(held.visits), until)
        self.totals.append(folded.changes)
        self.visits.release(folded)
        return len(folded.days)

    def rollups(self) -> dict[str, dict[tuple[Any, ...], tuple[int, ...]]]:
        stats: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 6)
        pages: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 3)
        dims: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 6)
        for changes in self.totals:
            for (site, day), figures in changes.days.items():
                local = date(1970, 1, 1) + timedelta(days=day)
                for (dimension, value), change in figures.items():
                    if dimension == SITE:
                        into, add = stats[(site, local)], change
                    elif dimension == PAGE:
                        into, add = pages[(site, local, value)], [*change[:2], change[2]]
                    else:
                        into, add = dims[(site, local, dimension, value)], change
                    for index, figure in enumerate(add):
                        into[index] += figure

        def table(rows: dict[tuple[Any, ...], list[int]]) -> dict[tuple[Any, ...], tuple[int, ...]]:
            return {key: tuple(value) for key, value in rows.items() if any(value)}

        return {
            "daily_site_stats": table(stats),
            "daily_site_path_counts": table(pages),
            "daily_dimension_stats": table(dims),
        }


def assert_the_definitions(owner: Owner, rows: list[Row]) -> None:
    expected = expected_rollups(as_stored_events(rows), ZONES)
    actual = owner.rollups()
    found = differences(expected, actual)
    assert not found, "\n".join(found)


def test_a_stream_in_time_order_counts_as_the_definitions_say() -> None:
    rows = stored_rows(300, seed=5)
    owner = Owner()
    newest = most_held = 0
    for start in range(0, len(rows), 50):
        batch = rows[start : start + 50]
        owner.store(batch)
        newest = max(newest, *(row[_TIMESTAMP] for row in batch))
        owner.fold(newest)  # as a processor folds while it works through a backlog
        most_held = max(most_held, len(owner.visits))  # the last half hour's visitor-days
    assert most_held > 0
    owner.fold(EVERYTHING)
    assert len(owner.visits) == 0
    assert owner.read_back > 0  # visitors came back after their day was folded
    assert_the_definitions(owner, rows)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch_size=st.integers(1, 120),
    swaps=st.floats(0, 0.3),
    late=st.floats(0, 0.1),
    fold_lag_minutes=st.sampled_from([0, 20, 45, 240]),
)
def test_any_batching_order_and_folding_count_as_the_definitions_say(
    seed: int, batch_size: int, swaps: float, late: float, fold_lag_minutes: int
) -> None:
    """Events out of time order (neighbours swapped), late ones (held back to the end,
    after their visits were folded and released), folds lagging the newest event or not."""
    rng = random.Random(seed)
    rows = stored_rows(60, seed=seed)
    arrival = list(rows)
    for index in range(len(arrival) - 1):
        if rng.random() < swaps:
            arrival[index], arrival[index + 1] = arrival[index + 1], arrival[index]
    held_back = [row for row in arrival if rng.random() < late]
    arrival = [row for row in arrival if row not in held_back] + held_back
    owner = Owner()
    newest = 0
    for start in range(0, len(arrival), batch_size):
        batch = arrival[start : start + batch_size]
        owner.store(batch)
        newest = max(newest, *(row[_TIMESTAMP] for row in batch))
        owner.fold(newest - fold_lag_minutes * 60_000_000)
    owner.fold(EVERYTHING)
    assert_the_definitions(owner, rows)


def test_an_event_after_the_last_visit_takes_the_short_way() -> None:
    """The common steps leave a visitor-day in memory without rewriting its row."""
    rows = stored_rows(40, seed=11)
    by_time = sorted(rows, key=lambda row: row[_TIMESTAMP])
    owner = Owner()
    owner.store(by_time[:1])
    rewritten = 0
    for row in by_time[1:]:
        batch = owner.visits.count([row], ZONES, owner.local_days, owner.keys)
        rewritten += len(batch.rewritten)
        for key in batch.unknown:
            owner.visits.add_created(batch, key)
    # Only events of the same microsecond as their visitor's last go the general way.
    same_moment = sum(1 for a, b in itertools.pairwise(by_time) if a[_TIMESTAMP] == b[_TIMESTAMP])
    assert rewritten <= same_moment


def test_a_visitor_day_is_released_only_once_its_last_visit_has_ended() -> None:
    visits = OpenVisits()
    key = ("s", 20_000, "5f0c6a1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b")
    start = 20_000 * 86_400_000_000 + 3_600_000_000
    visit = Visit(start, start, 1, 1, 0, [""] * 13, start, "/", start, "/", {"/": 1}, {}, {})
    batch = visits.count([], {}, LocalDays(), VisitorKeys())
    batch.unknown[key] = [visit]
    visits.add_created(batch, key)
    assert not visits.fold(start + VISIT_GAP_MICROS - 1).days
    folded = visits.fold(start + VISIT_GAP_MICROS)
    assert list(folded.days) == [key]
    visits.release(folded)
    assert len(visits) == 0


def the_last_three_of_a_visit(rows: list[Row]) -> list[Row]:
    """A visitor-day's last three events, at distinct times, all of its last visit."""
    days, keys, by_visitor_day = LocalDays(), VisitorKeys(), defaultdict(list)
    for row in sorted(rows, key=lambda row: row[_TIMESTAMP]):
        visitor = keys.key(row[4], row[7])
        if visitor is not None:
            day = days.day(ZONES.get(row[1]), row[_TIMESTAMP])
            by_visitor_day[(row[1], day, visitor)].append(row)
    for own in by_visitor_day.values():
        first, second, third = (row[_TIMESTAMP] for row in ([own[0]] * 3 + own)[-3:])
        if first < second < third and third - first <= VISIT_GAP_MICROS:
            return own[-3:]
    raise AssertionError("no such visit in the dataset")


def test_events_that_extend_a_visit_folded_meanwhile_change_its_dimensions_exactly() -> None:
    """Between a fold and its commit (release), and after the visitor-day was read back
    with its visits folded, an event that extends a folded visit is counted as a change
    of a folded visit, not as one of an open visit."""
    rows = stored_rows(200, seed=7)
    first, second, third = the_last_three_of_a_visit(rows)
    rest = [row for row in rows if row not in (first, second, third)]
    # Counted between the fold and the release:
    owner = Owner()
    owner.store([*rest, first])
    folded = owner.visits.fold(EVERYTHING - 1)
    for key, held in folded.days.items():
        owner.table[key] = (encode_visits(held.visits), folded.until)
    owner.totals.append(folded.changes)
    owner.store([second])  # extends the visit folded a moment ago
    owner.visits.release(folded)
    owner.store([third])
    owner.fold(EVERYTHING)
    assert_the_definitions(owner, rows)
    # Read back from its row, folded, then extended in later batches:
    owner = Owner()
    owner.store([*rest, first])
    owner.fold(EVERYTHING - 1)
    owner.store([second])
    owner.store([third])
    owner.fold(EVERYTHING)
    assert owner.read_back == 1
    assert_the_definitions(owner, rows)
