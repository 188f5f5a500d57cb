"""Stream entries to rows for the events table: pure code, no I/O.

The stream is a trust boundary: any client with Redis access can append to it, so every
entry is checked again, and one that could never be stored is rejected with a reason
instead of failing the batch it arrived in.

Rows keep what the stream carries where asyncpg can send it as it is, which is most of
the processor's time saved: UUIDs as their checked text, times as integers of
microseconds since the Unix epoch (see store.py for the codec that sends those).
"""

from __future__ import annotations

import dataclasses
import re
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import msgspec
import orjson

from common.constants import (
    EVENT_FIELD,
    MAX_EVENT_TYPE,
    MAX_MICROS,
    MAX_PATH,
    MAX_PROP_KEY,
    MAX_PROP_VALUE,
    MAX_PROPS,
    MAX_SCREEN_WIDTH,
    MAX_SITE_ID,
    MAX_URL,
    MAX_USER_ID,
    MIN_MICROS,
)
from common.text import text_fault
from processor.enrich import Origin, client_of, page_and_origin
from processor.useragents import Client

# Column order of the staging table and of each row tuple.
COLUMNS = (
    "event_id",  # str
    "site_id",  # str
    "event_type",  # str
    "path",  # str
    "user_id",  # str | None
    "timestamp",  # int, microseconds since the Unix epoch
    "received_at",  # int, likewise
    "visitor_id",  # str | None
    "client_ip",  # IPv4Address | IPv6Address | None
    "user_agent",  # str | None
    # What the url and referrer say (processor/enrich.py Origin), all str | None:
    *Origin._fields,
    "screen_width",  # int | None
    # What the User-Agent says (processor/useragents.py Client), all str | None:
    *Client._fields,
    "country",  # str | None, ISO 3166-1 alpha-2, from the edge
    "props",  # str | None, a JSON object of text keys and values
    "interactive",  # bool
)
# The staging table's columns: the event's, then the stream entry it came in (bytes), which
# `event_ids` keeps to tell a second delivery of an entry from a duplicate event.
STAGED_COLUMNS = (*COLUMNS, "entry_id")

Row = tuple[Any, ...]  # in STAGED_COLUMNS order
# A stream entry as redis-py returns it; an entry deleted while pending has no fields.
Entry = tuple[bytes, dict[bytes, bytes] | None]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class UndecodableEntry(ValueError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class DecodedBatch:
    entry_ids: list[bytes]  # every entry of the batch, to acknowledge once handled
    rows: list[Row]
    row_ids: list[bytes]  # the entry id of each row
    rejected: dict[bytes, str]  # entry id: why it can never be stored


def decode_entries(entries: list[Entry], entry_prefix: bytes = b"") -> DecodedBatch:
    """`entry_prefix`: the shard's number, in front of the entry ids rows keep
    (common/shards.py); the batch's own ids stay as Redis gave them."""
    rows: list[Row] = []
    row_ids: list[bytes] = []
    rejected: dict[bytes, str] = {}
    for entry_id, fields in entries:
        if not fields:
            continue  # deleted from the stream while pending: nothing left to store
        try:
            payload = fields.get(EVENT_FIELD)
            row = None if payload is None else _common_row(payload, entry_prefix + entry_id)
            rows.append(row or decode_event(fields, entry_prefix + entry_id))
        except UndecodableEntry as exc:
            rejected[entry_id] = str(exc)
        else:
            row_ids.append(entry_id)
    return DecodedBatch([entry_id for entry_id, _ in entries], rows, row_ids, rejected)


def decode_event(fields: dict[bytes, bytes], entry_id: bytes) -> Row:
    payload = fields.get(EVENT_FIELD)
    if payload is None:
        raise UndecodableEntry(f"no {EVENT_FIELD.decode()!r} field")
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise UndecodableEntry(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise UndecodableEntry("not a JSON object")
    visitor_id = event.get("visitor_id")
    client_ip = event.get("client_ip")
    url = _optional_text(event, "url", MAX_URL)
    page, origin = page_and_origin(url, _optional_text(event, "referrer", MAX_URL))
    # The page's own path unless the event names one (a hash-routed page, an old edge's).
    path = _text(event, "path", MAX_PATH) if url is None or "path" in event else page.path
    user_agent = _optional_text(event, "user_agent", None)  # in no index: no limit of ours
    screen_width = _screen_width(event.get("screen_width"))
    props = event.get("props")
    return (
        _uuid(event.get("event_id"), "event_id"),
        _text(event, "site_id", MAX_SITE_ID),
        _text(event, "event_type", MAX_EVENT_TYPE),
        path,
        _optional_text(event, "user_id", MAX_USER_ID),
        _time(event, "timestamp"),
        _time(event, "received_at"),
        None if visitor_id is None else _uuid(visitor_id, "visitor_id"),
        None if client_ip is None else _ip(client_ip),
        user_agent,
        *origin,
        screen_width,
        # The edge sends the User-Agent as "ua" where it is not to be stored.
        *client_of(user_agent or _optional_text(event, "ua", None), screen_width),
        _country(event.get("country")),
        None if props is None else _props(props),
        event.get("interactive") is not False,
        entry_id,
    )


class _CommonEvent(msgspec.Struct):
    """The common entry's shape, decoded and type-checked in C (msgspec), as the edge
    does it (ingest/validation.py): an entry the edge wrote from a tracker's or a back
    end's event. Any other shape or value goes decode_event's way, which names its fault.
    Fields it does not name are ignored, as decode_event ignores them."""

    event_id: str
    site_id: str
    event_type: str
    timestamp: int  # msgspec takes no bool for an int
    received_at: int
    # Unset, not None: a path given as null is refused, where a missing one is not.
    path: str | msgspec.UnsetType = msgspec.UNSET
    user_id: str | None = None
    visitor_id: str | None = None
    client_ip: str | None = None
    url: str | None = None
    referrer: str | None = None
    user_agent: str | None = None
    ua: str | None = None
    screen_width: int | None = None
    country: str | None = None
    props: None = None
    interactive: bool | None = None


_decode_common = msgspec.json.Decoder(_CommonEvent).decode


def _common_row(payload: bytes, entry_id: bytes) -> Row | None:
    """decode_event's row of a common entry, at less cost (an entry decoded in 5.7 µs
    rather than 7.3, docs/performance.md): ASCII text within its limits, no props. None
    for anything else, which then goes decode_event's way. tests/test_decode.py holds both
    ways to the same row."""
    try:
        event = _decode_common(payload)
    except msgspec.MsgspecError:
        return None
    site_id = event.site_id
    event_type = event.event_type
    path = event.path
    user_id = event.user_id or None
    url = event.url or None
    referrer = event.referrer or None
    user_agent = event.user_agent or None
    width = event.screen_width
    country = event.country
    visitor_id = event.visitor_id
    micros = event.timestamp
    received_at = event.received_at
    # One expression: each test is a C call; isascii() makes len() a length in bytes.
    if not (
        0 < len(site_id) <= MAX_SITE_ID
        and site_id.isascii()
        and "\x00" not in site_id
        and 0 < len(event_type) <= MAX_EVENT_TYPE
        and event_type.isascii()
        and "\x00" not in event_type
        and (
            (path is msgspec.UNSET and url is not None)
            or (
                isinstance(path, str)
                and 0 < len(path) <= MAX_PATH
                and path.isascii()
                and "\x00" not in path
            )
        )
        and (
            user_id is None
            or (len(user_id) <= MAX_USER_ID and user_id.isascii() and "\x00" not in user_id)
        )
        and (url is None or (len(url) <= MAX_URL and url.isascii() and "\x00" not in url))
        and (
            referrer is None
            or (len(referrer) <= MAX_URL and referrer.isascii() and "\x00" not in referrer)
        )
        and (user_agent is None or (user_agent.isascii() and "\x00" not in user_agent))
        and (width is None or 0 < width <= MAX_SCREEN_WIDTH)
        and (country is None or (len(country) == 2 and country.isascii() and country.isupper()))
        and MIN_MICROS <= micros <= MAX_MICROS
        and MIN_MICROS <= received_at <= MAX_MICROS
        and _UUID.fullmatch(event.event_id) is not None
        and (visitor_id is None or _UUID.fullmatch(visitor_id) is not None)
    ):
        return None
    client_ip = event.client_ip
    page, origin = page_and_origin(url, referrer)
    ua = user_agent or event.ua or None
    if ua is not None and not (ua.isascii() and "\x00" not in ua):
        return None
    return (
        event.event_id.lower(),
        site_id,
        event_type,
        path if isinstance(path, str) else page.path,
        user_id,
        micros,
        received_at,
        None if visitor_id is None else visitor_id.lower(),
        None if client_ip is None else _ip(client_ip),
        user_agent,
        *origin,
        width,
        *client_of(ua, width),
        country,
        None,
        event.interactive is not False,
        entry_id,
    )


def _screen_width(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 < value <= MAX_SCREEN_WIDTH:
        raise UndecodableEntry(f"screen_width: not an integer from 1 to {MAX_SCREEN_WIDTH}")
    return value


def _country(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2 or not value.isascii() or not value.isupper():
        raise UndecodableEntry("country: not an ISO 3166-1 alpha-2 code")
    return value


def _props(value: Any) -> str:
    """The properties as the JSON text of their column (jsonb takes text)."""
    if not isinstance(value, dict) or len(value) > MAX_PROPS:
        raise UndecodableEntry(f"props: not an object of at most {MAX_PROPS} entries")
    for key, text in value.items():
        if not isinstance(text, str) or not key:
            raise UndecodableEntry("props: keys and values must be text")
        fault = text_fault(key, MAX_PROP_KEY) or text_fault(text, MAX_PROP_VALUE)
        if fault is not None:
            raise UndecodableEntry(f"props: {fault}")
    return orjson.dumps(value).decode()


def _uuid(value: Any, key: str) -> str:
    if not isinstance(value, str) or _UUID.fullmatch(value) is None:
        raise UndecodableEntry(f"{key}: not a UUID")
    return value.lower()  # as PostgreSQL reads it back: one spelling per id


def _ip(value: Any) -> IPv4Address | IPv6Address:
    try:
        return ip_address(value)
    except ValueError:
        raise UndecodableEntry("client_ip: not an IP address") from None


def _text(event: dict[str, Any], key: str, max_bytes: int) -> str:
    value = event.get(key)
    # The common case in one test: ASCII, one byte a character (isascii() is O(1)).
    if (
        isinstance(value, str)
        and 0 < len(value) <= max_bytes
        and value.isascii()
        and "\x00" not in value
    ):
        return value
    if not isinstance(value, str) or not value:
        raise UndecodableEntry(f"{key}: not a non-empty string")
    return _storable(value, key, max_bytes)


def _optional_text(event: dict[str, Any], key: str, max_bytes: int | None) -> str | None:
    """A string, or None for a missing or empty one."""
    value = event.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UndecodableEntry(f"{key}: not a string")
    if (max_bytes is None or len(value) <= max_bytes) and value.isascii() and "\x00" not in value:
        return value
    return _storable(value, key, max_bytes)


def _storable(value: str, key: str, max_bytes: int | None) -> str:
    """The edge's own check, again: an entry may come from an older edge or straight from
    a client of Redis. Refused here, it never reaches PostgreSQL to fail its batch there."""
    fault = text_fault(value, max_bytes)
    if fault is not None:
        raise UndecodableEntry(f"{key}: {fault}")
    return value


def _time(event: dict[str, Any], key: str) -> int:
    micros = event.get(key)
    if type(micros) is not int:  # bool is a subclass of int: not accepted
        raise UndecodableEntry(f"{key}: not an integer of microseconds")
    if not MIN_MICROS <= micros <= MAX_MICROS:
        raise UndecodableEntry(f"{key}: out of range")
    return micros
