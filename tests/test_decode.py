"""Unit tests of stream entries to rows: no I/O."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.constants import EVENT_FIELD
from ingest.validation import parse_event
from processor.decode import (
    COLUMNS,
    STAGED_COLUMNS,
    Row,
    UndecodableEntry,
    _common_row,
    decode_entries,
    decode_event,
)

RECEIVED = 1_700_000_000_000_000


def entry(entry_id: bytes, payload: object) -> tuple[bytes, dict[bytes, bytes]]:
    return entry_id, {EVENT_FIELD: orjson.dumps(payload)}


def valid_event(**changes: object) -> dict[str, object]:
    body = {"site_id": "s", "event_type": "page_view", "path": "/p", "user_id": "u"}
    body.update(changes)
    return parse_event(orjson.dumps(body), RECEIVED)


def test_an_ingested_event_becomes_its_row() -> None:
    event = valid_event(timestamp="2024-05-01T12:00:00.5Z")
    batch = decode_entries([entry(b"1-0", event)])
    assert batch.entry_ids == [b"1-0"]
    assert batch.rejected == {}
    assert batch.row_ids == [b"1-0"]
    # UUIDs as their text, times as integers of microseconds since the Unix epoch.
    [row] = batch.rows
    assert row[:10] == (
        event["event_id"],
        "s",
        "page_view",
        "/p",
        "u",
        int(datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()) * 1_000_000 + 500_000,
        RECEIVED,
        None,
        None,
        None,
    )
    # Nothing to derive: every dimension unknown, the event an interaction.
    columns = dict(zip(STAGED_COLUMNS, row, strict=True))
    assert {value for name, value in columns.items() if name in DERIVED} == {None}
    assert columns["interactive"] is True
    assert columns["entry_id"] == b"1-0"  # kept with the event: see processor/tally.py
    assert uuid.UUID(batch.rows[0][0]).version == 7


DERIVED = set(COLUMNS[10:-1])


def test_a_trackers_event_becomes_its_row_with_what_it_says() -> None:
    event = valid_event(
        path=None,
        url="https://www.shop.example/pricing%20plans?utm_source=newsletter&utm_medium=email"
        "&utm_campaign=spring&gclid=abc",
        referrer="https://mail.example.org/inbox?id=1",
        screen_width=390,
        props={"plan": "pro"},
        interactive=False,
    ) | {
        "ua": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        "country": "DE",
    }
    [row] = decode_entries([entry(b"1-0", event)]).rows
    columns = dict(zip(STAGED_COLUMNS, row, strict=True))
    assert columns["path"] == "/pricing plans"
    assert columns["user_agent"] is None  # sent as "ua": not to be stored
    assert {name: columns[name] for name in DERIVED} == {
        "hostname": "shop.example",
        "referrer": "mail.example.org/inbox",
        "source": "newsletter",  # the tag wins over the referrer
        "utm_source": "newsletter",
        "utm_medium": "email",
        "utm_campaign": "spring",
        "utm_content": None,
        "utm_term": None,
        "click_id": "gclid",
        "screen_width": 390,
        "browser": "Safari",
        "browser_version": "17.1",
        "os": "iOS",
        "os_version": "17.1",
        "device": "Mobile",
        "country": "DE",
        "props": '{"plan":"pro"}',
    }
    assert columns["interactive"] is False


def test_an_explicit_path_wins_over_the_urls() -> None:
    event = valid_event(url="https://x.example/app", path="/app#/settings")
    [row] = decode_entries([entry(b"1-0", event)]).rows
    assert dict(zip(STAGED_COLUMNS, row, strict=True))["path"] == "/app#/settings"


def test_edge_enrichment_is_decoded() -> None:
    event = valid_event(user_id=None) | {
        "visitor_id": "3b241101-e2bb-4255-8caf-4136c566a962",
        "client_ip": "2001:db8::1",
        "user_agent": "Mozilla/5.0",
    }
    [row] = decode_entries([entry(b"1-0", event)]).rows
    assert row[4] is None
    assert row[7:10] == (
        "3b241101-e2bb-4255-8caf-4136c566a962",
        ipaddress.ip_address("2001:db8::1"),
        "Mozilla/5.0",
    )


def test_a_deleted_entry_is_acknowledged_without_a_row() -> None:
    batch = decode_entries([(b"1-0", None), (b"2-0", {})])
    assert batch.entry_ids == [b"1-0", b"2-0"]
    assert batch.rows == []
    assert batch.rejected == {}


@pytest.mark.parametrize(
    "fields",
    [
        {b"other": b"x"},
        {EVENT_FIELD: b"{not json"},
        {EVENT_FIELD: b"[1, 2]"},
        {EVENT_FIELD: orjson.dumps(valid_event(event_id=None) | {"event_id": "nope"})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"site_id": ""})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"path": None})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"user_id": 7})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"event_type": "a\x00b"})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"timestamp": "2024-01-01T00:00:00Z"})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"timestamp": True})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"received_at": 10**18})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"timestamp": -(10**17)})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"timestamp": 1.5e15})},
        {
            EVENT_FIELD: orjson.dumps(
                valid_event() | {"event_id": "3b241101e2bb42558caf4136c566a962"}
            )
        },
        {EVENT_FIELD: orjson.dumps(valid_event() | {"visitor_id": 5})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"visitor_id": "v"})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"client_ip": "300.1.1.1"})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"user_agent": ["x"]})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"ua": 5})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"url": 5})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"url": "/" + "u" * 2000})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"referrer": "a\x00b"})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"screen_width": "390"})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"screen_width": 0})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"country": "de"})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"country": "DEU"})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"props": ["x"]})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"props": {"k": 1}})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"props": {"k": "v" * 2001}})},
        {EVENT_FIELD: orjson.dumps(valid_event() | {"props": {"": "v"}})},
    ],
)
def test_a_bad_entry_is_rejected_and_its_neighbours_kept(fields: dict[bytes, bytes]) -> None:
    batch = decode_entries(
        [entry(b"1-0", valid_event()), (b"2-0", fields), entry(b"3-0", valid_event())]
    )
    assert batch.entry_ids == [b"1-0", b"2-0", b"3-0"]
    assert batch.row_ids == [b"1-0", b"3-0"]
    assert len(batch.rows) == 2
    assert list(batch.rejected) == [b"2-0"] and batch.rejected[b"2-0"] != ""


# A common entry, and every value a field may take that one of the two ways could treat
# apart: empty, null, of another type, not ASCII, with a NUL, over a limit, other case.
_CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
_COMMON: dict[str, object] = {
    "event_id": "0190b3c6-8d7e-7c4e-9a1b-2f3c4d5e6f70",
    "site_id": "example.com",
    "event_type": "page_view",
    "user_id": "u-1",
    "timestamp": RECEIVED - 5_000_000,
    "received_at": RECEIVED,
    "visitor_id": "5f0c6a1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b",
    "client_ip": "203.0.113.9",
    "url": "https://www.example.com/docs/start",
    "referrer": "https://duckduckgo.com/",
    "user_agent": _CHROME,
    "screen_width": 1280,
    "country": "DE",
}
_TEXTS = ["", None, 7, True, "\u00e9t\u00e9", "a\x00b", "x" * 3000, "Mixed"]
_OTHER_VALUES: dict[str, list[object]] = {
    "event_id": ["0190B3C6-8D7E-7C4E-9A1B-2F3C4D5E6F70", "not-a-uuid", "", None, 5],
    "site_id": _TEXTS,
    "event_type": _TEXTS,
    "path": ["/p", "/\u00e9", *_TEXTS],
    "user_id": _TEXTS,
    "timestamp": [-1, 2**62, -(2**62), True, 1.5, "1", None],
    "received_at": [2**62, False, None],
    "visitor_id": ["5F0C6A1E-2B3D-4E5F-8A9B-0C1D2E3F4A5B", "nope", "", None, 5],
    "client_ip": ["::1", "nonsense", "", None, 4],
    "url": [
        "https://Example.com/a/b",
        "http://example.com/a?utm_source=x&gclid=1",
        "https://example.com/%C3%A9",
        "/just/a/path",
        "ftp://example.com/x",
        "https://example.com/" + "p" * 2100,
        *_TEXTS,
    ],
    "referrer": ["https://www.example.com/other", "android-app://x", *_TEXTS],
    "user_agent": _TEXTS,
    "ua": [_CHROME, *_TEXTS],
    "screen_width": [390, 0, -5, 10**6, True, "1", None],
    "country": ["de", "D", "A1", "\u00c9U", "", None, 1],
    "props": [None, {}, {"plan": "pro"}, {"n": 1}, "x"],
    "interactive": [True, False, None, 0, "no"],
}
_CHANGES = st.dictionaries(
    st.sampled_from(sorted(_OTHER_VALUES)),
    st.integers(0, 100),
    max_size=3,
).map(
    lambda picks: {
        key: _OTHER_VALUES[key][pick % len(_OTHER_VALUES[key])] for key, pick in picks.items()
    }
)


def _outcome(decode: Callable[[], Row | None]) -> tuple[str, object]:
    try:
        return "row", decode()
    except UndecodableEntry as exc:
        return "rejected", str(exc)


@settings(max_examples=2000)
@given(changes=_CHANGES, left_out=st.sets(st.sampled_from(sorted(_COMMON)), max_size=2))
def test_the_common_way_makes_the_detailed_ways_row_or_leaves_the_entry_to_it(
    changes: dict[str, object], left_out: set[str]
) -> None:
    event = {k: v for k, v in _COMMON.items() if k not in left_out} | changes
    payload = orjson.dumps(event)
    detailed = _outcome(lambda: decode_event({EVENT_FIELD: payload}, b"1-0"))
    common = _outcome(lambda: _common_row(payload, b"1-0"))
    if common != ("row", None):  # None: left to the detailed way
        assert common == detailed


def test_the_edges_common_entry_takes_the_common_way() -> None:
    event = valid_event(
        url="https://www.example.com/pricing?utm_source=news",
        referrer="https://duckduckgo.com/",
        screen_width=1280,
    ) | {"ua": _CHROME, "country": "DE", "visitor_id": str(uuid.uuid4())}
    payload = orjson.dumps(event)
    row = _common_row(payload, b"1-0")
    assert row is not None
    assert row == decode_event({EVENT_FIELD: payload}, b"1-0")
    columns = dict(zip(STAGED_COLUMNS, row, strict=True))
    assert (columns["hostname"], columns["source"], columns["browser"]) == (
        "example.com",
        "news",
        "Chrome",
    )
