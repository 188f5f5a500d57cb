"""The ingest routes as raw ASGI endpoints: read, validate, hand to the intake, answer.

POST /event (one JSON event), POST /events (a JSON array or NDJSON) and GET /event.gif
(the no-script pixel, fields as query parameters); each also answers CORS preflights.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from common.config import Settings
from common.errors import error_body
from ingest.admission import RateLimited, RegistryNotLoaded, address_key
from ingest.asgi import (
    RETRY_AFTER,
    ClientGone,
    RequestError,
    check_body_headers,
    read_rest,
    render_json,
    send_json,
)
from ingest.client import ClientResolver
from ingest.cors import CorsPolicy
from ingest.intake import Intake, Overloaded
from ingest.metrics import LATENCY_BOUNDS, IngestMetrics
from ingest.stream_writer import StreamUnavailable
from ingest.validation import (
    InvalidBatch,
    InvalidEvent,
    TimeWindow,
    parse_batch,
    parse_event,
    validate_event,
)

UNAVAILABLE = error_body("unavailable", "the event store is unavailable; retry later")
OVERLOADED = error_body("overloaded", "too many events are waiting to be processed; retry later")
ORIGIN_REFUSED = RequestError(
    403, "origin_not_allowed", "this origin may not send events", "origin"
)
IGNORED = {"status": "ignored"}
REGISTRY_NOT_LOADED = error_body(
    "unavailable", "the site registry has not been read yet; retry later"
)
_LIMITED = {
    "address": "too many requests from this address; retry later",
    "site_id": "too many events for this site; retry later",
}
_LIMITED_DETAIL = {field: {"field": field, "message": text} for field, text in _LIMITED.items()}

# The smallest transparent 1x1 GIF.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
PIXEL_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", b"%d" % len(PIXEL)),
    (b"cache-control", b"no-store"),
]

# An invalid event's site_id (None where that was not valid) and the field at fault.
Rejection = tuple[str | None, str]
# status, answer, events to submit first, invalid events (the delivery ledger counts them)
Handled = tuple[int, Any, list[dict[str, Any]], list[Rejection]]
NO_REJECTIONS: list[Rejection] = []  # shared: never added to


class IngestEndpoint:
    """An ASGI app: Starlette's Route hands it the request without wrapping it."""

    reads_body = True
    reads_any_type = False  # as JSON, whatever Content-Type says (Plausible's route)
    route = ""  # its path, as metrics name it

    def __init__(self, settings: Settings, metrics: IngestMetrics):
        self._metrics = metrics
        self._statuses = metrics.statuses_of(self.route)  # answers by status, counted here
        self._max_body_bytes = settings.max_body_bytes
        self._max_events = settings.max_batch_events
        self._window = TimeWindow(settings.max_future_seconds, settings.max_age_seconds)
        self._cors = CorsPolicy(settings.cors_origins)
        self._clients = ClientResolver(settings.trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        # The request headers by (lower-case) name, built in C in one step. Of a repeated
        # header the last one counts (X-Forwarded-For: the nearest proxy's line).
        headers: dict[bytes, bytes] = dict(scope["headers"])
        if scope["method"] == "OPTIONS":
            await self._preflight(headers, send)
            return
        intake: Intake = scope["state"]["intake"]
        origin = headers.get(b"origin")
        cors = self._cors.response_headers(origin)
        extra_headers = cors
        try:
            if cors is None:
                raise ORIGIN_REFUSED
            if intake.backlog.exceeded:
                raise Overloaded
            peer = scope["client"][0] if scope.get("client") else ""
            ip = self._clients.client_ip(peer, headers.get(b"x-forwarded-for"))
            addresses = intake.admission.addresses
            if addresses is not None and addresses.over(ip if ":" not in ip else address_key(ip)):
                raise RateLimited("address")
            body = b""
            if self.reads_body:
                check_body_headers(headers, self._max_body_bytes, self.reads_any_type)
                message = await receive()
                body = message.get("body", b"")
                if (
                    message.get("more_body", False)
                    or len(body) > self._max_body_bytes
                    or message["type"] != "http.request"
                ):
                    body = await read_rest(message, receive, self._max_body_bytes)
            status, answer, events, rejected = self.handle(scope, body, time.time_ns() // 1000)
            if rejected:
                intake.writer.count_rejected(rejected)
            if events:
                user_agent = headers.get(b"user-agent", b"").decode("latin-1")
                submitted = len(events)
                written = intake.submit(events, ip, user_agent, origin)
                if written is None:
                    answer = self.all_ignored(answer, submitted)
                else:
                    if len(events) < submitted:
                        answer = self.with_ignored(answer, events, submitted)
                    await written
                    self._metrics.events_accepted += len(events)
        except RequestError as exc:
            status, answer = exc.status, exc.body
        except ClientGone:
            return
        except RateLimited as exc:
            status = 429
            answer = error_body("rate_limited", _LIMITED[exc.field], [_LIMITED_DETAIL[exc.field]])
            extra_headers = [*cors, *RETRY_AFTER] if cors else RETRY_AFTER  # the next second
        except Overloaded:
            status, answer = 503, OVERLOADED
            extra_headers = [*cors, *RETRY_AFTER] if cors else RETRY_AFTER
        except StreamUnavailable:
            status, answer = 503, UNAVAILABLE
            extra_headers = [*cors, *RETRY_AFTER] if cors else RETRY_AFTER
        except RegistryNotLoaded:
            status, answer = 503, REGISTRY_NOT_LOADED
            extra_headers = [*cors, *RETRY_AFTER] if cors else RETRY_AFTER
        # One exit: answers are rendered to bytes, then sent (no coroutine per layer).
        # Counted inline: a call would cost more than the counting.
        elapsed = time.perf_counter() - started
        metrics = self._metrics
        self._statuses[status] += 1
        metrics.latency_counts[bisect_left(LATENCY_BOUNDS, elapsed)] += 1
        metrics.latency_sum += elapsed
        response_headers, content = self.render(status, answer)
        if extra_headers:
            response_headers += extra_headers
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": content})

    def all_ignored(self, answer: Any, submitted: int) -> Any:
        """The answer once all the request's events were ignored (a bot's, say)."""
        return IGNORED

    def with_ignored(self, answer: Any, kept: list[dict[str, Any]], submitted: int) -> Any:
        """The answer once some of the request's events were ignored (a batch's)."""
        return answer

    def handle(self, scope: Scope, body: bytes, received_at: int) -> Handled:
        raise NotImplementedError

    def render(self, status: int, answer: Any) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers (a new list: the caller adds to it) and body of an answer."""
        return render_json(answer)

    async def _preflight(self, headers: dict[bytes, bytes], send: Send) -> None:
        allowed = self._cors.preflight_headers(
            headers.get(b"origin"), headers.get(b"access-control-request-headers")
        )
        if allowed is None:
            await send_json(send, ORIGIN_REFUSED.status, ORIGIN_REFUSED.body)
            return
        await send({"type": "http.response.start", "status": 204, "headers": allowed})
        await send({"type": "http.response.body", "body": b""})


class EventEndpoint(IngestEndpoint):
    """POST /event: one JSON event."""

    route = "/event"

    def handle(self, scope: Scope, body: bytes, received_at: int) -> Handled:
        try:
            event = parse_event(body, received_at, self._window)
        except InvalidEvent as exc:
            return 400, error_body("invalid_event", str(exc), exc.detail()), [], [exc.rejection]
        # Rendered here rather than by orjson: this answer is the hot path's.
        accepted = b'{"status":"accepted","event_id":"%s"}' % event["event_id"].encode()
        return 202, accepted, [event], NO_REJECTIONS


class BatchEndpoint(IngestEndpoint):
    """POST /events: valid events are accepted, invalid ones reported by index."""

    route = "/events"

    def handle(self, scope: Scope, body: bytes, received_at: int) -> Handled:
        try:
            batch = parse_batch(body, received_at, self._max_events, self._window)
        except InvalidBatch as exc:
            body_error = [{"field": "body", "message": str(exc)}]
            return 400, error_body("invalid_batch", str(exc), body_error), [], NO_REJECTIONS
        if not batch.events:
            detail = [{"index": index, **d} for index, r in batch.rejected for d in r.detail()]
            rejected = [r.rejection for _, r in batch.rejected]
            return (
                400,
                error_body("invalid_batch", "no valid event in the batch", detail),
                [],
                rejected,
            )
        answer = {
            "accepted": len(batch.events),
            "event_ids": [event["event_id"] for event in batch.events],
            "rejected": [{"index": index, "detail": r.detail()} for index, r in batch.rejected],
        }
        return 202, answer, batch.events, [r.rejection for _, r in batch.rejected]

    def with_ignored(self, answer: Any, kept: list[dict[str, Any]], submitted: int) -> Any:
        """Ignored events are neither accepted nor rejected: counted apart, ids left out."""
        kept_ids = {event["event_id"] for event in kept}
        ignored = [event_id for event_id in answer["event_ids"] if event_id not in kept_ids]
        return {
            **answer,
            "accepted": len(kept),
            "event_ids": [event_id for event_id in answer["event_ids"] if event_id in kept_ids],
            "ignored": len(ignored),
        }


class PixelEndpoint(IngestEndpoint):
    """GET /event.gif?site_id=…&event_type=…: for pages without JavaScript."""

    route = "/event.gif"

    reads_body = False

    def handle(self, scope: Scope, body: bytes, received_at: int) -> Handled:
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            fields = dict(parse_qsl(query, keep_blank_values=True, max_num_fields=32))
            event = validate_event(fields, received_at, self._window)
        except InvalidEvent as exc:
            return 400, error_body("invalid_event", str(exc), exc.detail()), [], [exc.rejection]
        except ValueError:  # too many query fields
            detail = [{"field": "query", "message": "too many parameters"}]
            answer = error_body("invalid_event", "too many parameters", detail)
            return 400, answer, [], [(None, "query")]
        return 200, None, [event], NO_REJECTIONS

    def render(self, status: int, answer: Any) -> tuple[list[tuple[bytes, bytes]], bytes]:
        if status != 200:
            return render_json(answer)
        return list(PIXEL_HEADERS), PIXEL
