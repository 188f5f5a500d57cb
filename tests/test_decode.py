"""Unit tests of stream entries to rows: no I/O."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from common.constants import EVENT_FIELD
from ingest.validation import parse_event
from processor.decode import COLUMNS, STAGED_COLUMNS, decode_entries

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
