"""Request bodies to validated events: pure code, no I/O.

A valid event is a dict of event_id, site_id, event_type, path, user_id, timestamp and
received_at, and of what a page's tracker adds where it is given: url, referrer,
screen_width, props and interactive (only when false). Times are integers of microseconds
since the Unix epoch (UTC). With what the edge adds (see ingest/intake.py) it is what the
stream carries and what the processor turns into a row (deriving hostname, path, source,
campaign and client from url, referrer and User-Agent: processor/enrich.py).

An event with a url and no path leaves path out: the processor takes it from the url.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec
import orjson

from common.constants import (
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
from ingest.ids import uuid7

DEFAULT_PATH = "/"

# A URL with a scheme (http, https, android-app, ...): data: and javascript: hold no page.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_NO_PAGE_SCHEMES = ("data:", "javascript:")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclasses.dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class InvalidEvent(ValueError):
    def __init__(self, errors: list[FieldError], site_id: str | None = None):
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors
        self.site_id = site_id  # where it was valid: the delivery ledger counts per site

    @property
    def rejection(self) -> tuple[str | None, str]:
        """(site_id or None, the first field at fault), as the delivery ledger counts it."""
        return self.site_id, self.errors[0].field

    def detail(self) -> list[dict[str, str]]:
        return [{"field": e.field, "message": e.message} for e in self.errors]


@dataclasses.dataclass(frozen=True, slots=True)
class TimeWindow:
    """How far from the time of receipt an event's timestamp may lie (None: no bound)."""

    max_future_s: int | None = None
    max_age_s: int | None = None
    # The same in microseconds, what each event is compared with; no bound: the widest span.
    max_future_us: int = dataclasses.field(init=False)
    max_age_us: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        unbounded = MAX_MICROS - MIN_MICROS
        for name, seconds in (("max_future_us", self.max_future_s), ("max_age_us", self.max_age_s)):
            micros = unbounded if seconds is None else seconds * 1_000_000
            object.__setattr__(self, name, micros)  # frozen: set once, here


UNBOUNDED = TimeWindow()


class InvalidBatch(ValueError):
    """The batch as a whole cannot be read: not JSON, empty, or too many events."""


def parse_event(body: bytes, received_at: int, window: TimeWindow = UNBOUNDED) -> dict[str, Any]:
    """Parse and validate one JSON event; raises InvalidEvent naming every field at fault."""
    event = _common_event(body, received_at, window)
    if event is not None:
        return event
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidEvent([FieldError("body", "not valid JSON")]) from None
    return validate_event(data, received_at, window)


class ParsedBatch(NamedTuple):
    events: list[dict[str, Any]]  # the valid events, in the order sent
    rejected: list[tuple[int, InvalidEvent]]  # (index in the batch, why) of the others


def parse_batch(
    body: bytes, received_at: int, max_events: int, window: TimeWindow = UNBOUNDED
) -> ParsedBatch:
    """Parse a JSON array or NDJSON body into its valid events and the invalid ones' faults."""
    common = _common_batch(body, received_at, max_events, window)
    if common is not None:
        return ParsedBatch(common, [])
    items = _batch_items(body)
    if not items:
        raise InvalidBatch("the batch holds no events")
    if len(items) > max_events:
        raise InvalidBatch(f"more than {max_events} events in one batch")
    batch = ParsedBatch([], [])
    for index, item in enumerate(items):
        try:
            if isinstance(item, bytes):  # an NDJSON line, parsed on its own
                batch.events.append(parse_event(item, received_at, window))
            else:
                batch.events.append(validate_event(item, received_at, window))
        except InvalidEvent as exc:
            batch.rejected.append((index, exc))
    return batch


def _batch_items(body: bytes) -> list[Any]:
    """The items of a JSON array, or the non-blank lines of an NDJSON body."""
    stripped = body.lstrip()
    if stripped.startswith(b"{"):
        return [line for line in stripped.split(b"\n") if line.strip()]
    try:
        data = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        raise InvalidBatch("not valid JSON") from None
    if not isinstance(data, list):
        raise InvalidBatch("must be a JSON array of events, or NDJSON")
    return data


def validate_event(
    data: object, received_at: int, window: TimeWindow = UNBOUNDED
) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidEvent([FieldError("body", "must be a JSON object")])
    errors: list[FieldError] = []
    site_id = _text(data, "site_id", MAX_SITE_ID, errors, required=True)
    event_type = _text(data, "event_type", MAX_EVENT_TYPE, errors, required=True)
    path = _text(data, "path", MAX_PATH, errors)
    user_id = _text(data, "user_id", MAX_USER_ID, errors)
    timestamp = _timestamp(data.get("timestamp"), received_at, window, errors)
    event_id = data.get("event_id")
    event_id = uuid7(received_at) if event_id is None else _event_id(event_id, errors)
    url = None if data.get("url") is None else _url(data, errors)  # "": no url
    referrer = _text(data, "referrer", MAX_URL, errors)
    screen_width = data.get("screen_width")
    if screen_width is not None:
        screen_width = _screen_width(screen_width, errors)
    interactive = data.get("interactive")
    if interactive is not None and interactive is not True and interactive is not False:
        errors.append(FieldError("interactive", "must be true or false"))
    props = data.get("props")
    if props is not None:
        props = _props(props, errors)
    if errors:
        raise InvalidEvent(errors, site_id)
    event = _event(
        event_id,
        site_id,  # type: ignore[arg-type]  # not None: it would have been an error
        event_type,  # type: ignore[arg-type]
        path,
        user_id,
        timestamp,
        received_at,
        url,
        referrer,
        screen_width,
        interactive is False,
    )
    if props is not None:
        event["props"] = props
    return event


def _event(
    event_id: str,
    site_id: str,
    event_type: str,
    path: str | None,
    user_id: str | None,
    timestamp: int,
    received_at: int,
    url: str | None,
    referrer: str | None,
    screen_width: int | None,
    not_interactive: bool,
) -> dict[str, Any]:
    """A valid event as the stream carries it: what was not given is left out."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "site_id": site_id,
        "event_type": event_type,
        "path": path or DEFAULT_PATH,
        "user_id": user_id,
        "timestamp": timestamp,
        "received_at": received_at,
    }
    if url is not None:
        event["url"] = url
        if path is None:
            del event["path"]  # the processor takes it from the url
    if referrer is not None:
        event["referrer"] = referrer
    if screen_width is not None:
        event["screen_width"] = screen_width
    if not_interactive:
        event["interactive"] = False
    return event


class _CommonEvent(msgspec.Struct):
    """The shape of the common event, decoded and type-checked in C (msgspec): what a
    tracker or a back end sends, with ASCII text and no props. Fields it does not name
    are ignored, as validate_event ignores them."""

    site_id: str
    event_type: str
    path: str | None = None
    user_id: str | None = None
    timestamp: str | None = None
    event_id: str | None = None
    url: str | None = None
    referrer: str | None = None
    screen_width: int | None = None
    interactive: bool | None = None
    props: None = None


_decode_common = msgspec.json.Decoder(_CommonEvent).decode
_decode_common_batch = msgspec.json.Decoder(list[_CommonEvent]).decode
_WEB_URL = ("https://", "http://", "/")


def _common_event(body: bytes, received_at: int, window: TimeWindow) -> dict[str, Any] | None:
    """The event of a common body, exactly as validate_event would make it, in about 60%
    of its time (docs/performance.md); None for anything else (another type, non-ASCII
    text, an empty or over-long value, a bad time or id, props, not JSON), which then
    goes the detailed way, to be accepted there or refused with every fault named.
    tests/test_validation.py checks that both ways agree on every body they both accept."""
    try:
        common = _decode_common(body)
    except msgspec.MsgspecError:
        return None
    return _checked(common, received_at, window)


def _common_batch(
    body: bytes, received_at: int, max_events: int, window: TimeWindow
) -> list[dict[str, Any]] | None:
    """A JSON array of common events, every one valid, the same way; None for any other
    batch (one uncommon event sends the whole batch the detailed way)."""
    if not body.lstrip().startswith(b"["):
        return None
    try:
        batch = _decode_common_batch(body)
    except msgspec.MsgspecError:
        return None
    if not 0 < len(batch) <= max_events:
        return None
    events = []
    for common in batch:
        event = _checked(common, received_at, window)
        if event is None:
            return None
        events.append(event)
    return events


def _checked(common: _CommonEvent, received_at: int, window: TimeWindow) -> dict[str, Any] | None:
    site_id = common.site_id
    event_type = common.event_type
    path = common.path
    user_id = common.user_id
    url = common.url
    referrer = common.referrer
    width = common.screen_width
    # One expression: each test is a C call; isascii() makes len() a length in bytes.
    if not (
        0 < len(site_id) <= MAX_SITE_ID
        and site_id.isascii()
        and "\x00" not in site_id
        and 0 < len(event_type) <= MAX_EVENT_TYPE
        and event_type.isascii()
        and "\x00" not in event_type
        and (path is None or (0 < len(path) <= MAX_PATH and path.isascii() and "\x00" not in path))
        and (
            user_id is None
            or (0 < len(user_id) <= MAX_USER_ID and user_id.isascii() and "\x00" not in user_id)
        )
        and (
            url is None
            or (
                0 < len(url) <= MAX_URL
                and url.isascii()
                and "\x00" not in url
                and url.startswith(_WEB_URL)
            )
        )
        and (
            referrer is None
            or (0 < len(referrer) <= MAX_URL and referrer.isascii() and "\x00" not in referrer)
        )
        and (width is None or 0 < width <= MAX_SCREEN_WIDTH)
    ):
        return None
    errors: list[FieldError] = []
    timestamp = (
        received_at
        if common.timestamp is None
        else _timestamp(common.timestamp, received_at, window, errors)
    )
    event_id = uuid7(received_at) if common.event_id is None else _event_id(common.event_id, errors)
    if errors:
        return None
    return _event(
        event_id,
        site_id,
        event_type,
        path,
        user_id,
        timestamp,
        received_at,
        url,
        referrer,
        width,
        common.interactive is False,
    )


def _url(data: dict[str, Any], errors: list[FieldError]) -> str | None:
    url = _text(data, "url", MAX_URL, errors)
    if url is None or url.startswith(("https://", "http://", "/")):
        return url
    if _SCHEME.match(url) is None:
        errors.append(FieldError("url", "must be an absolute URL or a path starting with /"))
    elif url[:11].lower().startswith(_NO_PAGE_SCHEMES):
        errors.append(FieldError("url", "scheme is not allowed"))
    return url


def _screen_width(value: object, errors: list[FieldError]) -> int | None:
    if type(value) is int and 0 < value <= MAX_SCREEN_WIDTH:  # bool is not an int here
        return value
    errors.append(FieldError("screen_width", f"must be an integer from 1 to {MAX_SCREEN_WIDTH}"))
    return None


def _props(value: object, errors: list[FieldError]) -> dict[str, str] | None:
    """Custom properties: text keys, values text, numbers or booleans (kept as text)."""
    if not isinstance(value, dict):
        errors.append(FieldError("props", "must be a JSON object"))
        return None
    if len(value) > MAX_PROPS:
        errors.append(FieldError("props", f"at most {MAX_PROPS} properties"))
        return None
    props: dict[str, str] = {}
    for key, raw in value.items():
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, str):
            text = raw
        elif isinstance(raw, int | float):
            text = orjson.dumps(raw).decode()
        else:
            errors.append(FieldError("props", f"{key[:50]!r}: must be text, a number or a boolean"))
            return None
        fault = (
            "must not be empty"
            if not key
            else text_fault(key, MAX_PROP_KEY) or text_fault(text, MAX_PROP_VALUE)
        )
        if fault is not None:
            errors.append(
                FieldError(
                    "props",
                    f"{key[:50]!r}: {fault} (keys at most {MAX_PROP_KEY} bytes, "
                    f"values at most {MAX_PROP_VALUE})",
                )
            )
            return None
        props[key] = text
    return props


def _text(
    data: dict[str, Any],
    field: str,
    max_bytes: int,
    errors: list[FieldError],
    *,
    required: bool = False,
) -> str | None:
    value = data.get(field)
    # The common case in one test: ASCII, one byte a character (isascii() is O(1)).
    if (
        isinstance(value, str)
        and 0 < len(value) <= max_bytes
        and value.isascii()
        and "\x00" not in value
    ):
        return value
    if value is None or value == "":
        if required:
            errors.append(FieldError(field, "required"))
        return None
    if not isinstance(value, str):
        errors.append(FieldError(field, "must be a string"))
        return None
    # Refused here, not in PostgreSQL: an index entry too long, a NUL, a lone surrogate.
    fault = text_fault(value, max_bytes)
    if fault is None:
        return value
    errors.append(FieldError(field, fault))
    return None


def _timestamp(
    value: object, received_at: int, window: TimeWindow, errors: list[FieldError]
) -> int:
    if value is None:
        return received_at
    if not isinstance(value, str) or len(value) > 64:
        errors.append(FieldError("timestamp", "must be an ISO-8601 string"))
        return received_at
    try:
        # Aware minus aware applies the offset; a time without one cannot be subtracted.
        micros = (datetime.fromisoformat(value) - _EPOCH) // _MICROSECOND
    except ValueError:
        errors.append(FieldError("timestamp", "must be an ISO-8601 date and time"))
        return received_at
    except TypeError:
        errors.append(FieldError("timestamp", "must include a UTC offset, e.g. Z or +02:00"))
        return received_at
    if not MIN_MICROS <= micros <= MAX_MICROS:  # e.g. 0001-01-01T00:00+01:00, before year 1 in UTC
        errors.append(FieldError("timestamp", "out of range"))
    elif micros - received_at > window.max_future_us:
        errors.append(FieldError("timestamp", f"more than {window.max_future_s} s in the future"))
    elif received_at - micros > window.max_age_us:
        errors.append(FieldError("timestamp", f"older than {window.max_age_s} s"))
    else:
        return micros
    return received_at


def _event_id(value: object, errors: list[FieldError]) -> str:
    """The client's own id, for retries that must not count twice."""
    if isinstance(value, str) and len(value) <= 45:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    errors.append(FieldError("event_id", "must be a UUID"))
    return ""
