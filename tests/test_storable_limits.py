"""Whatever the edge accepts, PostgreSQL can store: limits in bytes, checked at the edge and
again when the processor decodes, and the index arithmetic behind them."""

from __future__ import annotations

import asyncio
import inspect
import random
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from common import constants
from common.constants import (
    BTREE_MAX_ENTRY,
    EVENT_FIELD,
    MAX_EVENT_TYPE,
    MAX_MICROS,
    MAX_PATH,
    MAX_PROP_KEY,
    MAX_PROP_VALUE,
    MAX_SITE_ID,
    MAX_URL,
    MAX_USER_ID,
    MICROS_PER_DAY,
    MIN_MICROS,
    PAGE_VIEW,
    WRITTEN_TABLES,
)
from common.text import text_fault
from ingest.validation import InvalidEvent, parse_event, validate_event
from processor.decode import decode_entries
from processor.rollups import PROPS_PREFIX
from processor.store import EventStore, prepare_connection

RECEIVED = 1_700_000_000_000_000
LIMITS = {
    "site_id": MAX_SITE_ID,
    "event_type": MAX_EVENT_TYPE,
    "path": MAX_PATH,
    "user_id": MAX_USER_ID,
}
# daily_dimension_stats: a dimension's name (the longest, a custom property's) and value.
INDEXED_LIMITS = LIMITS | {
    "dimension": len(PROPS_PREFIX) + MAX_PROP_KEY,
    "value": max(MAX_PATH, MAX_URL, MAX_PROP_VALUE, MAX_EVENT_TYPE),
    "entry_id": 41,  # a stream entry id: two 64-bit numbers and a dash
}
CJK = "\u4e2d"  # 3 bytes of UTF-8
EMOJI = "\U0001f600"  # 4 bytes
VISITOR = "3b241101-e2bb-4255-8caf-4136c566a962"


def event_with(**fields: object) -> dict[str, object]:
    return {"site_id": "s", "event_type": PAGE_VIEW} | fields


def faults(payload: dict[str, object]) -> list[dict[str, str]]:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(orjson.dumps(payload), RECEIVED)
    return caught.value.detail()


# The edge.


def test_a_path_of_2047_cjk_characters_is_refused_in_bytes() -> None:
    # 6,141 bytes: accepted when the limit counted characters, then refused by the index.
    assert faults(event_with(path="/" + CJK * 2046)) == [
        {"field": "path", "message": "longer than 2048 bytes (UTF-8)"}
    ]


@pytest.mark.parametrize("field", sorted(LIMITS))
@pytest.mark.parametrize(("char", "width"), [("a", 1), ("\u00e9", 2), (CJK, 3), (EMOJI, 4)])
def test_every_text_field_takes_exactly_its_limit_in_bytes(
    field: str, char: str, width: int
) -> None:
    limit = LIMITS[field]
    fitting = char * (limit // width) + "a" * (limit % width)  # exactly `limit` bytes
    assert parse_event(orjson.dumps(event_with(**{field: fitting})), RECEIVED)[field] == fitting
    assert faults(event_with(**{field: fitting + "a"})) == [
        {"field": field, "message": f"longer than {limit} bytes (UTF-8)"}
    ]


@pytest.mark.parametrize("field", sorted(LIMITS))
def test_nul_and_lone_surrogates_are_refused_in_every_text_field(field: str) -> None:
    assert faults(event_with(**{field: "a\x00b"})) == [
        {"field": field, "message": "must not contain NUL characters"}
    ]
    # orjson refuses a lone surrogate in a body; a dict handed over directly is checked too.
    for text in ("\ud800", "a" + "\udfff" * 3, CJK + "\ud83d"):
        with pytest.raises(InvalidEvent) as caught:
            validate_event(event_with(**{field: text}), RECEIVED)
        assert [e.field for e in caught.value.errors] == [field]
        assert "surrogate" in caught.value.errors[0].message
    for body in (b'"\\ud800"', b'"a\\udc00"', b'"\xed\xa0\x80"'):  # escaped, and raw
        with pytest.raises(InvalidEvent) as caught:
            parse_event(b'{"site_id":"s","event_type":"e","%s":%s}' % (field.encode(), body), 1)
        assert [e.field for e in caught.value.errors] == ["body"]


def test_text_fault_counts_bytes() -> None:
    assert text_fault("a" * 2048, 2048) is None
    assert text_fault("a" * 2049, 2048) == "longer than 2048 bytes (UTF-8)"
    assert text_fault(CJK * 682 + "aa", 2048) is None  # 2,048 bytes
    assert text_fault(CJK * 683, 2048) == "longer than 2048 bytes (UTF-8)"
    assert text_fault(EMOJI * 512, 2048) is None
    assert text_fault(EMOJI * 512 + "a", 2048) is not None
    assert text_fault("x\x00" * 5000) == "must not contain NUL characters"  # no limit: NUL still
    assert text_fault("\u00e9" * 100_000) is None


@pytest.mark.parametrize(
    ("timestamp", "micros"),
    [("0001-01-01T00:00:00Z", MIN_MICROS), ("9999-12-31T23:59:59.999999Z", MAX_MICROS)],
)
async def test_the_first_and_last_moments_a_datetime_can_hold_are_stored(
    timestamp: str, micros: int, db: asyncpg.Pool
) -> None:
    # The partitions of January of year 1 and of December 9999 can be made and filled
    # (asyncpg would send date.min as -infinity, were months sent as dates).
    event = parse_event(orjson.dumps(event_with(timestamp=timestamp)), RECEIVED)
    assert event["timestamp"] == micros
    entry = stream_entry(timestamp=micros)
    assert decode_entries([entry]).rejected == {}
    assert (await EventStore(db).store(decode_entries([entry]).rows)).inserted == 1
    assert await db.fetchval('SELECT "timestamp" FROM events') == micros
    entry = stream_entry(timestamp=MIN_MICROS - 1)
    assert decode_entries([entry]).rejected == {b"2-0": "timestamp: out of range"}


# Any string at all: the edge's one-test shortcut must never disagree with text_fault.
any_text = st.text(
    st.characters() | st.characters(categories=["Cs"]) | st.just("\x00"), max_size=80
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(text=any_text, field=st.sampled_from(sorted(LIMITS)), pad=st.sampled_from([0, 1, 2, 3]))
def test_the_edge_and_the_processor_refuse_exactly_what_text_fault_refuses(
    text: str, field: str, pad: int
) -> None:
    limit = LIMITS[field]
    value = "a" * (limit - len(text.encode("utf-8", "surrogatepass")) + pad - 2) + text
    expected = text_fault(value, limit)
    try:
        event = validate_event(event_with(**{field: value}), RECEIVED)
    except InvalidEvent as exc:
        assert [(e.field, e.message) for e in exc.errors] == [(field, expected)]
        return
    assert expected is None
    # What the edge accepted, the processor decodes to a row.
    batch = decode_entries([(b"1-0", {EVENT_FIELD: orjson.dumps(event)})])
    assert batch.rejected == {} and len(batch.rows) == 1


# The processor.


def stream_entry(**changes: object) -> tuple[bytes, dict[bytes, bytes]]:
    event = validate_event(event_with(path="/p", user_id="u"), RECEIVED) | changes
    return b"2-0", {EVENT_FIELD: orjson.dumps(event)}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"path": "/" + CJK * 2046}, "path: longer than 2048 bytes (UTF-8)"),
        ({"path": "a" * 2049}, "path: longer than 2048 bytes (UTF-8)"),
        ({"site_id": EMOJI * 33}, "site_id: longer than 128 bytes (UTF-8)"),
        ({"event_type": "\u00e9" * 241}, "event_type: longer than 480 bytes (UTF-8)"),
        ({"user_id": CJK * 86}, "user_id: longer than 256 bytes (UTF-8)"),
        ({"user_id": "u\x00"}, "user_id: must not contain NUL characters"),
        ({"user_agent": "Mozilla\x00"}, "user_agent: must not contain NUL characters"),
    ],
)
def test_an_entry_the_edge_would_refuse_is_rejected_at_decode_naming_field_and_limit(
    changes: dict[str, object], reason: str
) -> None:
    """Written by an older edge, or straight to Redis: rejected before any database work."""
    good = stream_entry()
    batch = decode_entries([(b"1-0", good[1]), stream_entry(**changes), (b"3-0", good[1])])
    assert batch.rejected == {b"2-0": reason}
    assert batch.row_ids == [b"1-0", b"3-0"]


def test_user_agent_has_no_limit_of_ours_but_must_be_text() -> None:
    """It is in no index: any length is stored (out of line, by PostgreSQL)."""
    batch = decode_entries([stream_entry(user_agent="Mozilla/5.0 \u00e9" * 2000)])
    assert batch.rejected == {}


# The arithmetic in common/constants.py, against the schema.

_PADDING = {"c": 0, "s": 1, "i": 3, "d": 7}  # worst padding before a value of this alignment
_INDEX_COLUMNS = """
SELECT t.relname AS table_name, i.relname AS index_name, x.indkey::int2[] AS keys,
       array_agg(a.attname ORDER BY k.ord) AS columns,
       array_agg(ty.typlen ORDER BY k.ord) AS lengths,
       array_agg(ty.typalign::text ORDER BY k.ord) AS aligns,
       bool_or(NOT a.attnotnull) AS nullable
FROM pg_index x
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
LEFT JOIN pg_type ty ON ty.oid = a.atttypid
WHERE t.relnamespace = 'public'::regnamespace
  AND (t.relname = ANY($1::text[])
       OR t.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass))
GROUP BY t.relname, i.relname, x.indkey
"""


def worst_entry(record: asyncpg.Record) -> int:
    """An index entry's largest size from the limits: header (and null bitmap), each column
    after its worst padding, text as a 4-byte length and its bytes, the whole to 8."""
    assert 0 not in record["keys"], f"{record['index_name']}: an expression; count it here"
    size = 16 if record["nullable"] else 8
    for column, length, align in zip(
        record["columns"], record["lengths"], record["aligns"], strict=True
    ):
        if length == -1:
            assert column in INDEXED_LIMITS, (
                f"{record['index_name']} holds {column}, a value without a byte limit"
            )
            length = 4 + INDEXED_LIMITS[column]
        size += _PADDING[align] + length
    return size + 7


async def test_every_index_entry_fits_with_a_margin_as_constants_py_says(
    db: asyncpg.Pool,
) -> None:
    await db.execute("SELECT ensure_events_partition('2024-01-01')")  # a partition too
    records = await db.fetch(_INDEX_COLUMNS, list(WRITTEN_TABLES))
    computed = {r["index_name"]: worst_entry(r) for r in records}
    # The arithmetic is written down once, in common/constants.py; it must be this.
    written = {
        table: int(total)
        for table, total in re.findall(
            r"^#   (\w+) \([^)]*\)[ \d+]*= (\d+)$", inspect.getsource(constants), re.M
        )
    }
    primary = {
        r["table_name"]: worst_entry(r) for r in records if r["index_name"].endswith("_pkey")
    }
    assert set(primary) == set(WRITTEN_TABLES) - {"events"}  # events has none (sql/003)
    assert written == primary
    assert max(computed.values()) <= 0.95 * BTREE_MAX_ENTRY  # a clear margin


# Into PostgreSQL: whatever the validation accepts is stored.


def _cjk(count: int, seed: int = 1) -> str:
    """`count` random CJK characters (3 bytes each): PostgreSQL cannot compress them much."""
    rng = random.Random(seed)
    return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(count))


_RANGES = [(0x20, 0x7E), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]


@st.composite
def texts(draw: st.DrawFn, max_bytes: int) -> str:
    """Text of any kind: short ones drawn by Hypothesis; exactly `max_bytes` bytes of random
    characters of one UTF-8 width or mixed (which compress badly); or `max_bytes` such
    characters, as many as a limit counted in characters let through."""
    # A Random seeded by Hypothesis: its own draws favour the first choice and low code
    # points, hence mostly short text, and long text of one repeated (compressible) character.
    rng = draw(st.randoms(use_true_random=True))
    kind = rng.choice(["short", "full", "full", "characters"])
    if kind == "short":
        text = draw(
            st.text(
                st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                min_size=1,
                max_size=60,
            )
        )
        while len(text.encode()) > max_bytes:
            text = text[:-1]
        return text or "a"
    ranges = rng.choice([*([r] for r in _RANGES), _RANGES])
    chars: list[str] = []
    size = 0
    while len(chars) < max_bytes:
        low, high = rng.choice(ranges)
        char = chr(rng.randint(low, high))
        if kind == "full" and size + len(char.encode()) > max_bytes:
            return "".join(chars) + "a" * (max_bytes - size)
        chars.append(char)
        size += len(char.encode())
    return "".join(chars)


offsets = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])
moments = st.datetimes(timezones=offsets)  # years 1 to 9999: a few out of range in UTC
# Mostly page views, whose paths go into an index; None is as good as absent.
bodies = st.fixed_dictionaries(
    {
        "site_id": texts(MAX_SITE_ID),
        "event_type": st.sampled_from([PAGE_VIEW, PAGE_VIEW, None]).flatmap(
            lambda kind: st.just(kind) if kind else texts(MAX_EVENT_TYPE)
        ),
        "path": st.sampled_from([True, True, False]).flatmap(
            lambda given: texts(MAX_PATH) if given else st.none()
        ),
        "user_id": st.none() | texts(MAX_USER_ID),
        "timestamp": st.none() | moments.map(datetime.isoformat),
    }
)
# What the edge adds: a visitor id for events without a user_id, and the client's details.
enrichment = st.fixed_dictionaries(
    {
        "visitor_id": st.uuids().map(str),
        "client_ip": st.sampled_from(["203.0.113.9", "2001:db8::1"]),
        # Read from the header as latin-1; an empty one is none.
        "user_agent": st.text(st.characters(max_codepoint=255, exclude_characters="\x00")).map(
            lambda agent: agent or None
        ),
    }
)


# A failing example of 2 kB strings is worth printing whole.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(st.tuples(bodies, enrichment), min_size=4, max_size=8))
@example(  # the largest of everything, in characters of every width; the first and last times
    events=[
        (
            {
                "site_id": EMOJI * 32,
                "event_type": PAGE_VIEW,
                "path": "".join(chr(0x4E00 + 7 * i) for i in range(682)) + "ab",
                "user_id": "".join(chr(0x10000 + 7 * i) for i in range(64)),
                "timestamp": timestamp,
            },
            {"visitor_id": VISITOR, "client_ip": "::1", "user_agent": "\u00ff"},
        )
        for timestamp in (
            "9999-12-31T23:59:59.999999Z",
            "0001-02-01T00:00:00Z",
            "0001-01-31T23:59:59.999999Z",  # refused: out of range
        )
    ]
)
@example(  # 2,047 CJK characters that do not compress: accepted when limits were characters
    events=[
        (
            {"site_id": "s", "event_type": PAGE_VIEW, "path": "/" + _cjk(2046)},
            {"visitor_id": VISITOR, "client_ip": "::1", "user_agent": None},
        )
    ]
)
def test_every_event_the_validation_accepts_is_stored(
    database_url: str, events: list[tuple[dict[str, object], dict[str, object]]]
) -> None:
    accepted = []
    for body, extra in events:
        try:
            event = parse_event(orjson.dumps(body), RECEIVED)
        except InvalidEvent as exc:  # a value longer than its limit, a time out of range
            assert all(
                e.message.endswith(" bytes (UTF-8)") or e.message == "out of range"
                for e in exc.errors
            ), exc
            continue
        visitor_id = extra.pop("visitor_id")
        if event["user_id"] is None:
            event["visitor_id"] = visitor_id
        accepted.append(event | extra)
    if accepted:
        asyncio.run(_store_and_check(database_url, accepted))


async def _store_and_check(database_url: str, events: list[dict[str, Any]]) -> None:
    entries = [(f"{n}-1".encode(), {EVENT_FIELD: orjson.dumps(e)}) for n, e in enumerate(events)]
    batch = decode_entries(entries)
    assert batch.rejected == {}
    unique = {(e["site_id"], e["event_id"]): e for e in events}.values()

    def day(event: dict[str, Any]) -> date:
        return date(1970, 1, 1) + timedelta(days=event["timestamp"] // MICROS_PER_DAY)

    views = [e for e in unique if e["event_type"] == PAGE_VIEW]
    paths = Counter((e["site_id"], day(e), e["path"]) for e in views)
    users = {(e["site_id"], day(e), e["user_id"]) for e in unique if e["user_id"] is not None}
    visitors = {(e["site_id"], day(e), e["visitor_id"]) for e in unique if e["user_id"] is None}
    async with asyncpg.create_pool(
        database_url, min_size=1, max_size=1, init=prepare_connection
    ) as pool:
        await pool.execute(f"TRUNCATE {', '.join(WRITTEN_TABLES)}")
        result = await EventStore(pool).store(batch.rows)
        assert result.inserted == len(unique)
        assert result.new_users == len(users) + len(visitors)
        assert await pool.fetchval("SELECT count(*) FROM events") == len(unique)
        stored_paths = await pool.fetch(
            "SELECT site_id, date, path, views FROM daily_site_path_counts"
        )
        assert Counter({(r[0], r[1], r[2]): r[3] for r in stored_paths}) == paths
        visitor_days = await pool.fetchval("SELECT count(*) FROM visitor_days")
        assert visitor_days == len(users) + len(visitors)
        stats = await pool.fetchrow(
            "SELECT coalesce(sum(total_views), 0), coalesce(sum(unique_users), 0)"
            " FROM daily_site_stats"
        )
        assert tuple(stats) == (len(views), len(users) + len(visitors))
        stored = await pool.fetch("SELECT site_id, path, user_id, user_agent FROM events")
        assert Counter(tuple(r) for r in stored) == Counter(
            (e["site_id"], e["path"], e["user_id"], e["user_agent"]) for e in unique
        )
