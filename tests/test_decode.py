"""Unit tests of stream entries to rows: no I/O."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from common.constants import EVENT_FIELD
from ingest.validation import parse_event
from processor.decode import decode_entries

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
    assert batch.rows == [
        (
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
    ]
    assert uuid.UUID(batch.rows[0][0]).version == 7


def test_edge_enrichment_is_decoded() -> None:
    event = valid_event(user_id=None) | {
        "visitor_id": "3b241101-e2bb-4255-8caf-4136c566a962",
        "client_ip": "2001:db8::1",
        "user_agent": "Mozilla/5.0",
    }
    [row] = decode_entries([entry(b"1-0", event)]).rows
    assert row[4] is None
    assert row[7:] == (
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
