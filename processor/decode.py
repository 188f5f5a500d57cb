"""Stream entries to rows for the events table: pure code, no I/O.

The stream is a trust boundary: any client with Redis access can append to it, so every
entry is checked again, and one that could never be stored is rejected with a reason
instead of failing the batch it arrived in.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from common.constants import EVENT_FIELD

# Column order of the staging table and of each row tuple.
COLUMNS = ("event_id", "site_id", "event_type", "path", "user_id", "timestamp", "received_at")

Row = tuple[uuid.UUID, str, str, str, str | None, datetime, datetime]
# A stream entry as redis-py returns it; an entry deleted while pending has no fields.
Entry = tuple[bytes, dict[bytes, bytes] | None]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UndecodableEntry(ValueError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class DecodedBatch:
    entry_ids: list[bytes]  # every entry of the batch, to acknowledge once handled
    rows: list[Row]
    rejected: list[tuple[bytes, dict[bytes, bytes], str]]  # (entry id, fields, reason)


def decode_entries(entries: list[Entry]) -> DecodedBatch:
    rows: list[Row] = []
    rejected: list[tuple[bytes, dict[bytes, bytes], str]] = []
    for entry_id, fields in entries:
        if not fields:
            continue  # deleted from the stream while pending: nothing left to store
        try:
            rows.append(decode_event(fields))
        except UndecodableEntry as exc:
            rejected.append((entry_id, fields, str(exc)))
    return DecodedBatch([entry_id for entry_id, _ in entries], rows, rejected)


def decode_event(fields: dict[bytes, bytes]) -> Row:
    payload = fields.get(EVENT_FIELD)
    if payload is None:
        raise UndecodableEntry(f"no {EVENT_FIELD.decode()!r} field")
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise UndecodableEntry(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise UndecodableEntry("not a JSON object")
    user_id = event.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or "\x00" in user_id):
        raise UndecodableEntry("user_id: not a string")
    return (
        _uuid(event.get("event_id")),
        _text(event, "site_id"),
        _text(event, "event_type"),
        _text(event, "path"),
        user_id or None,
        _time(event, "timestamp"),
        _time(event, "received_at"),
    )


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise UndecodableEntry("event_id: not a UUID") from None


def _text(event: dict[str, Any], key: str) -> str:
    value = event.get(key)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise UndecodableEntry(f"{key}: not a non-empty string")
    return value


def _time(event: dict[str, Any], key: str) -> datetime:
    micros = event.get(key)
    if not isinstance(micros, int) or isinstance(micros, bool):
        raise UndecodableEntry(f"{key}: not an integer of microseconds")
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise UndecodableEntry(f"{key}: out of range") from None
