"""The trackers of others, unchanged: Plausible's POST /api/event and Umami's POST /api/send.

Each route is a thin adapter. It reads the other product's body into the fields of our
own event and hands them to validate_event; from there on the request takes the path of
POST /event (bot filter, admission, visitor id, the stream writer). Only the answers are
the other product's, since its tracker reads them. The wire contracts, with their
sources, are in docs/compatibility.md.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from common.constants import (
    MAX_PROP_KEY,
    MAX_PROP_VALUE,
    MAX_PROPS,
    MAX_SCREEN_WIDTH,
    MAX_URL,
    PAGE_VIEW,
)
from ingest.asgi import render_json
from ingest.endpoints import NO_REJECTIONS, Handled, IngestEndpoint
from ingest.intake import Intake
from ingest.validation import InvalidEvent, validate_event

# --- Plausible: POST /api/event -------------------------------------------------------

PLAUSIBLE_PAGEVIEW = "pageview"
PLAUSIBLE_MAX_NAME = 120  # characters
# Engagement events carry scroll depth and engaged time; stored, never an interaction.
PLAUSIBLE_ENGAGEMENT = ("engagement", "pageleave")
# Our field names in Plausible's words, for its error answers.
_PLAUSIBLE_FIELDS = {"site_id": "domain", "event_type": "event_name", "path": "url"}
_PROPS_TOO_LONG = f"keys should have at most {MAX_PROP_KEY} bytes and values {MAX_PROP_VALUE} bytes"
_PLAIN_TEXT = (b"content-type", b"text/plain; charset=utf-8")


class PlausibleError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.body = {"errors": {field: [message]}}


@dataclasses.dataclass(frozen=True, slots=True)
class Dropped:
    """Plausible's 202 answer: `ok`, with how many of the request's events were dropped
    (a bot's, a site's that is not registered, ...) in x-plausible-dropped."""

    count: int = 0


def plausible_events(data: object) -> tuple[list[str], dict[str, Any]]:
    """The site ids (one event for each) and our event fields of a Plausible request.
    Raises PlausibleError with Plausible's own message."""
    if not isinstance(data, dict):
        raise PlausibleError("request", "Unable to parse request body as json")
    name = _either(data, "n", "name")
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)
    if not isinstance(name, str) or not name.strip():
        raise PlausibleError("event_name", "can't be blank")
    if len(name) > PLAUSIBLE_MAX_NAME:
        raise PlausibleError("event_name", "should be at most 120 character(s)")
    url = _either(data, "u", "url")
    if url is None:
        raise PlausibleError("url", "is required")
    if not isinstance(url, str):
        raise PlausibleError("url", "must be a valid url")
    if len(url.encode(errors="replace")) > MAX_URL:
        raise PlausibleError("url", f"should be at most {MAX_URL} byte(s)")
    if url[:5].lower() == "data:":
        raise PlausibleError("url", "scheme is not allowed")
    try:
        parts = urlsplit(url)
    except ValueError:  # an IPv6 host with no closing bracket, say
        raise PlausibleError("url", "must be a valid url") from None
    fields: dict[str, Any] = {"event_type": PAGE_VIEW if name == PLAUSIBLE_PAGEVIEW else name}
    if parts.scheme or url.startswith("/"):
        fields["url"] = url
    else:  # "example.com/page": a URI of only a path, as Plausible reads it
        fields["url"] = "/" + url.lstrip("/")
    if _either(data, "h", "hashMode") == 1 and parts.fragment:
        fields["path"] = (unquote(parts.path) or "/") + "#" + unquote(parts.fragment)
    referrer = _either(data, "r", "referrer")
    if isinstance(referrer, str) and referrer:
        fields["referrer"] = _cut(referrer, MAX_URL)
    props = _plausible_props(_either(data, "m", "meta", "p", "props"))
    if props:
        fields["props"] = props
    if name in PLAUSIBLE_ENGAGEMENT:
        _check_engagement(data)
        fields["interactive"] = False
    elif _either(data, "i", "interactive") is False:
        fields["interactive"] = False
    return _plausible_domains(_either(data, "d", "domain"), parts.hostname), fields


def _either(data: dict[str, Any], *keys: str) -> Any:
    """The first of the keys with a value: Plausible reads `n || name` (null and false
    fall through; an empty string does not)."""
    for key in keys:
        value = data.get(key)
        if value is not None and value is not False:
            return value
    return data.get(keys[-1])


def _plausible_domains(domain: object, url_host: str | None) -> list[str]:
    """A comma-separated list, each trimmed and without a leading www.; the page's host
    when none is given."""
    if domain is None:
        domain = url_host or ""
    if not isinstance(domain, str):
        raise PlausibleError("domain", "is invalid")
    domains = [item.strip().removeprefix("www.") for item in domain.split(",")]
    if not all(domains):
        raise PlausibleError("domain", "can't be blank")
    return list(dict.fromkeys(domains))  # one event per site, however often it is named


def _plausible_props(raw: object) -> dict[str, str]:
    """Plausible's reading: an object or the JSON text of one; entries whose key or value
    is a list, an object or blank are dropped, the rest kept as text, 30 at most; a key or
    value over its limit fails the request."""
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
    if not isinstance(raw, dict):
        return {}
    props: dict[str, str] = {}
    for key, value in raw.items():
        text = _prop_text(value)
        if text is None or not key.lstrip() or not text.lstrip():
            continue
        if len(key.encode(errors="replace")) > MAX_PROP_KEY or (
            len(text.encode(errors="replace")) > MAX_PROP_VALUE
        ):
            raise PlausibleError("props", _PROPS_TOO_LONG)
        props[key] = text
        if len(props) == MAX_PROPS:
            break
    return props


def _prop_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return orjson.dumps(value).decode()
    return None  # null, a list or an object


def _check_engagement(data: dict[str, Any]) -> None:
    """An engagement event needs its scroll depth (sd) or engaged time (e)."""
    for key in ("sd", "e"):
        value = data.get(key)
        if isinstance(value, str) and value.isdigit():
            return
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return
    raise PlausibleError(
        "event_name",
        "engagement event requires a valid integer value for at least one of 'sd' or 'e' fields",
    )


def _cut(text: str, max_bytes: int) -> str:
    """At most max_bytes of UTF-8, cut at a character boundary (Plausible truncates)."""
    if len(text) <= max_bytes and text.isascii():
        return text
    return text.encode(errors="replace")[:max_bytes].decode(errors="ignore")


class PlausibleEventEndpoint(IngestEndpoint):
    """POST /api/event: Plausible's Events API, as its trackers send it (text/plain JSON).
    As Plausible does, a body of any declared type is read as JSON."""

    reads_any_type = True
    route = "/api/event"

    def handle(self, scope: Any, body: bytes, received_at: int) -> Handled:
        try:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise PlausibleError("request", "Unable to parse request body as json") from None
            domains, fields = plausible_events(data)
            events = [
                validate_event({**fields, "site_id": domain}, received_at, self._window)
                for domain in domains
            ]
        except PlausibleError as exc:
            return 400, exc.body, [], [(None, exc.field)]
        except InvalidEvent as exc:
            errors: dict[str, list[str]] = {}
            for error in exc.errors:
                errors.setdefault(_PLAUSIBLE_FIELDS.get(error.field, error.field), []).append(
                    error.message
                )
            return 400, {"errors": errors}, [], [exc.rejection]
        return 202, Dropped(), events, NO_REJECTIONS

    def all_ignored(self, answer: Any, submitted: int) -> Any:
        return Dropped(submitted) if isinstance(answer, Dropped) else answer

    def with_ignored(self, answer: Any, kept: list[dict[str, Any]], submitted: int) -> Any:
        return Dropped(submitted - len(kept)) if isinstance(answer, Dropped) else answer

    def render(self, status: int, answer: Any) -> tuple[list[tuple[bytes, bytes]], bytes]:
        if not isinstance(answer, Dropped):
            return render_json(answer)
        headers = [_PLAIN_TEXT, (b"content-length", b"2")]
        if answer.count:
            headers.append((b"x-plausible-dropped", b"%d" % answer.count))
        return headers, b"ok"


# --- Umami: POST /api/send ------------------------------------------------------------

UMAMI_MAX_NAME = 50
_UMAMI_TYPES = ("event", "identify")


# Our field names in Umami's payload's words, for its error answers.
_UMAMI_FIELDS = {
    "site_id": "website",
    "event_type": "name",
    "props": "data",
    "user_id": "id",
    "screen_width": "screen",
}


def _umami_bad_request(detail: list[dict[str, str]]) -> dict[str, Any]:
    """Umami's 400, with the fields at fault (ours: Umami puts its schema's tree there)."""
    return {
        "error": {"message": "Bad request", "code": "bad-request", "status": 400, "detail": detail}
    }


class UmamiError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.body = _umami_bad_request([{"field": field, "message": message}])


def umami_event(data: object) -> dict[str, Any] | None:
    """Our event fields of an Umami request; None for an `identify` (its session data is
    not kept: see docs/compatibility.md). Raises UmamiError naming the field."""
    if not isinstance(data, dict):
        raise UmamiError("body", "must be a JSON object")
    kind = data.get("type")
    if kind not in _UMAMI_TYPES:
        raise UmamiError("type", "must be event or identify")
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise UmamiError("payload", "must be an object")
    website = payload.get("website")
    try:
        site_id = str(uuid.UUID(website)) if isinstance(website, str) else None
    except ValueError:
        site_id = None
    if site_id is None:
        raise UmamiError("payload.website", "must be a UUID")
    if kind == "identify":
        return None
    fields: dict[str, Any] = {"site_id": site_id, "event_type": PAGE_VIEW}
    name = payload.get("name")
    if name is not None:
        if not isinstance(name, str) or not name or len(name) > UMAMI_MAX_NAME:
            raise UmamiError("payload.name", f"must be text of 1 to {UMAMI_MAX_NAME} characters")
        fields["event_type"] = name
    url = payload.get("url")
    if isinstance(url, str) and url:
        hostname = payload.get("hostname")
        # The tracker sends the whole URL; other clients may send a path and the host.
        if url.startswith("/") and isinstance(hostname, str) and hostname:
            url = f"https://{hostname}{url}"
        fields["url"] = url
    referrer = payload.get("referrer")
    if isinstance(referrer, str) and referrer:
        fields["referrer"] = referrer
    screen = payload.get("screen")
    if isinstance(screen, str):
        width = screen.partition("x")[0]
        if width.isdigit() and 0 < int(width) <= MAX_SCREEN_WIDTH:
            fields["screen_width"] = int(width)
    event_data = payload.get("data")
    if event_data is not None:
        fields["props"] = _umami_props(event_data)
    if payload.get("id") is not None:
        fields["user_id"] = payload["id"]
    timestamp = payload.get("timestamp")
    if timestamp is not None:
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise UmamiError("payload.timestamp", "must be an integer of Unix seconds")
        try:
            fields["timestamp"] = datetime.fromtimestamp(timestamp, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            raise UmamiError("payload.timestamp", "out of range") from None
    return fields


def _umami_props(data: object) -> dict[str, Any]:
    """Umami's event data: any JSON values; a list or an object is kept as its JSON text."""
    if not isinstance(data, dict):
        raise UmamiError("payload.data", "must be an object")
    return {
        key: orjson.dumps(value).decode() if isinstance(value, list | dict) else value
        for key, value in data.items()
        if value is not None
    }


class UmamiSendEndpoint(IngestEndpoint):
    """POST /api/send: Umami's collect API, as its tracker and @umami/node send it. The
    website id names a registered site where one has it (`python -m sites add
    --umami-website`), else it is the site_id itself.

    No x-umami-cache token is handed out: the tracker sends one back only when it got
    one, and we need none (the visitor id is made at the edge from the day's salt, the
    address and the User-Agent, visits by the processor); a token that carried ids would
    let a client choose its own."""

    route = "/api/send"

    def handle(self, scope: Any, body: bytes, received_at: int) -> Handled:
        try:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise UmamiError("body", "not valid JSON") from None
            fields = umami_event(data)
            if fields is None:
                return 200, {}, [], NO_REJECTIONS
            intake: Intake = scope["state"]["intake"]
            fields["site_id"] = intake.admission.umami_site(fields["site_id"])
            event = validate_event(fields, received_at, self._window)
        except UmamiError as exc:
            return 400, exc.body, [], [(None, exc.field)]
        except InvalidEvent as exc:
            detail = [
                {"field": f"payload.{_UMAMI_FIELDS.get(e.field, e.field)}", "message": e.message}
                for e in exc.errors
            ]
            return 400, _umami_bad_request(detail), [], [exc.rejection]
        return 200, {"event_id": event["event_id"]}, [event], NO_REJECTIONS

    def all_ignored(self, answer: Any, submitted: int) -> Any:
        return {"beep": "boop"}  # Umami's answer to what it does not store
