"""The sessionization rules and their building blocks, as pure code (processor/visits.py,
days.py, rollups.py): no Redis, no PostgreSQL but where a function has an SQL twin."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import orjson
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from common.constants import EVENT_FIELD
from processor.days import LocalDays, VisitorKeys
from processor.decode import Row, decode_event
from processor.rollups import RollupChanges, folded_contribution
from processor.visits import (
    VISIT_GAP_MICROS,
    Visit,
    decode_visits,
    encode_visits,
    merge,
    visit_of,
)

START = 1_796_000_000_000_000  # 2026-11-30, microseconds since 1970
MINUTE = 60_000_000


def event(
    at: int,
    *,
    event_type: str = "page_view",
    path: str = "/",
    referrer: str | None = None,
    interactive: bool = True,
    props: dict[str, str] | None = None,
) -> Row:
    payload: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "site_id": "s",
        "event_type": event_type,
        "url": f"https://s.example{path}",
        "timestamp": at,
        "received_at": at,
        "visitor_id": "3b241101-e2bb-4255-8caf-4136c566a962",
    }
    if referrer is not None:
        payload["referrer"] = referrer
    if not interactive:
        payload["interactive"] = False
    if props is not None:
        payload["props"] = props
    return decode_event({EVENT_FIELD: orjson.dumps(payload)}, b"0-0")


def visits_of(*rows: Row) -> list[Visit]:
    return merge([], sorted((visit_of(row) for row in rows), key=lambda v: v.start))


def test_a_gap_of_thirty_minutes_continues_a_visit_and_a_longer_one_starts_another() -> None:
    assert len(visits_of(event(START), event(START + 30 * MINUTE))) == 1
    assert len(visits_of(event(START), event(START + 30 * MINUTE + 1))) == 2
    three = visits_of(event(START), event(START + 29 * MINUTE), event(START + 58 * MINUTE))
    assert len(three) == 1  # each gap counts, not the distance from the first event
    assert three[0].duration == 58 * MINUTE


def test_a_visit_takes_its_source_from_its_first_event_and_its_pages_from_its_page_views() -> None:
    visit = visits_of(
        event(START, event_type="signup", path="/form", referrer="https://www.google.com/"),
        event(START + MINUTE, path="/a", referrer="https://t.co/x"),
        event(START + 2 * MINUTE, path="/b"),
        event(START + 3 * MINUTE, event_type="click", path="/b"),
    )[0]
    assert visit.dimensions[0] == "Google"  # source, of the signup that came first
    assert (visit.entry_page, visit.exit_page) == ("/a", "/b")  # page views only
    assert (visit.pageviews, visit.events, visit.interactions) == (2, 4, 2)
    assert visit.names == {"signup": 1, "click": 1}


def test_a_bounce_is_one_page_view_and_no_interaction() -> None:
    def bounce(*rows: Row) -> int:
        return visits_of(*rows)[0].bounce

    assert bounce(event(START)) == 1
    assert bounce(event(START), event(START + MINUTE, event_type="scroll", interactive=False)) == 1
    assert bounce(event(START), event(START + MINUTE, event_type="click")) == 0
    assert bounce(event(START), event(START + MINUTE)) == 0
    assert bounce(event(START, event_type="click")) == 0  # no page view at all


def test_events_of_the_same_microsecond_are_ordered_by_what_they_carry() -> None:
    rows = [event(START, path=path) for path in ("/b", "/a", "/c")]
    forwards, backwards = visits_of(*rows)[0], visits_of(*reversed(rows))[0]
    assert (forwards.entry_page, forwards.exit_page) == ("/a", "/c")
    assert forwards == backwards


def test_a_visitor_counts_once_per_value_however_many_visits_share_it() -> None:
    visits = visits_of(
        event(START, path="/a"), event(START + 60 * MINUTE, path="/a"), event(START + 120 * MINUTE)
    )
    changes = RollupChanges()
    changes.count_new("s", 1, folded_contribution(visits, START + 200 * MINUTE))
    figures = changes.days[("s", 1)]
    # visitors, visits, page views, bounces, duration, events
    assert figures[("visit:entry_page", "/a")] == [1, 2, 2, 2, 0, 2]
    assert figures[("visit:entry_page", "/")] == [1, 1, 1, 1, 0, 1]
    assert figures[("visit:device", "")] == [1, 3, 3, 3, 0, 3]
    # Only visits that had ended by then are folded.
    early = folded_contribution(visits, START + 130 * MINUTE)
    assert early[("visit:entry_page", "/a")] == [2, 2, 2, 0, 2]
    assert ("visit:entry_page", "/") not in early


@st.composite
def event_times(draw: st.DrawFn) -> list[int]:
    """Times a visitor's events could have: bursts a few seconds to 40 minutes apart."""
    gaps = draw(
        st.lists(
            st.sampled_from([0, 1, MINUTE, 29 * MINUTE, 30 * MINUTE, 30 * MINUTE + 1, 40 * MINUTE]),
            min_size=1,
            max_size=25,
        )
    )
    times, at = [], START
    for gap in gaps:
        at += gap
        times.append(at)
    return times


@hypothesis_settings(max_examples=200, deadline=None)
@given(times=event_times(), seed=st.integers(0, 2**32))
def test_visits_do_not_depend_on_how_events_were_batched_or_ordered(
    times: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    rows = [
        event(at, path=rng.choice(["/a", "/b", "/c"]), event_type=rng.choice(["page_view", "x"]))
        for at in times
    ]
    at_once = encode_visits(visits_of(*rows))
    shuffled = rows[:]
    rng.shuffle(shuffled)
    state: list[Visit] = []
    while shuffled:  # batches of any size, each stored and read back
        size = rng.randint(1, len(shuffled))
        batch, shuffled = shuffled[:size], shuffled[size:]
        state = decode_visits(encode_visits(merge(state, visits_of(*batch))))
    assert state == decode_visits(at_once)  # the same summaries (dicts in any order)
    # And what it is: maximal runs of events with no gap over 30 minutes.
    ordered = sorted(times)
    splits = sum(1 for a, b in itertools.pairwise(ordered) if b - a > VISIT_GAP_MICROS)
    assert len(state) == splits + 1


ZONES = ["UTC", "Asia/Kolkata", "America/Los_Angeles", "Australia/Lord_Howe", "Pacific/Chatham"]


@hypothesis_settings(max_examples=500, deadline=None)
@given(
    micros=st.integers(-2_000_000_000_000_000, 4_000_000_000_000_000),
    zone=st.sampled_from(ZONES),
)
def test_a_local_day_is_the_day_zoneinfo_gives(micros: int, zone: str) -> None:
    days = LocalDays()
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    expected = moment.astimezone(ZoneInfo(zone)).date().toordinal()
    assert days.day(zone, micros) == expected - datetime(1970, 1, 1).toordinal()
    assert days.day(zone, micros) == days.day(zone, micros)  # and from the memo


def test_local_days_change_at_local_midnight_across_a_change_of_clocks() -> None:
    days = LocalDays()
    # Los Angeles left daylight saving time on 2026-11-01 at 02:00 local (09:00 UTC).
    before = int(datetime(2026, 11, 1, 6, 59, 59, tzinfo=UTC).timestamp() * 1_000_000)
    after = int(datetime(2026, 11, 1, 7, 0, 0, tzinfo=UTC).timestamp() * 1_000_000)
    assert days.day("America/Los_Angeles", after) - days.day("America/Los_Angeles", before) == 1
    late = int(datetime(2026, 11, 2, 7, 59, 59, tzinfo=UTC).timestamp() * 1_000_000)
    assert days.day("America/Los_Angeles", late) == days.day("America/Los_Angeles", after)


async def test_a_user_ids_visitor_key_is_the_one_sql_computes(db: asyncpg.Pool) -> None:
    keys = VisitorKeys()
    users = ["alice", "Bob", "\u4e2d\u6587", "a" * 256]
    computed = await db.fetch(
        "SELECT visitor_key(u, NULL)::text FROM unnest($1::text[]) WITH ORDINALITY AS t(u, n)"
        " ORDER BY n",
        users,
    )
    assert [keys.key(user, None) for user in users] == [r[0] for r in computed]
    visitor = "3b241101-e2bb-4255-8caf-4136c566a962"
    assert keys.key(None, visitor) == visitor
