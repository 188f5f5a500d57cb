"""The ingest routes as raw ASGI endpoints: read, validate, append to the stream, answer 202."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.types import Receive, Send

from common.errors import error_body
from ingest.asgi import RETRY_AFTER, RequestError, check_content_type, read_body, send_json
from ingest.stream_writer import StreamUnavailable, StreamWriter
from ingest.validation import InvalidBatch, InvalidEvent, parse_batch, parse_event

UNAVAILABLE = error_body("unavailable", "the event store is unavailable; retry later")


class _IngestEndpoint:
    """An ASGI app: Starlette's Route hands it the request without wrapping it."""

    def __init__(self, max_body_bytes: int):
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        writer: StreamWriter = scope["state"]["stream_writer"]
        try:
            check_content_type(scope)
            body = await read_body(scope, receive, self._max_body_bytes)
            status, answer, events = self.handle(body, time.time_ns() // 1000)
        except RequestError as exc:
            await send_json(send, exc.status, exc.body)
            return
        if events:
            try:
                await writer.append([orjson.dumps(event) for event in events])
            except StreamUnavailable:
                await send_json(send, 503, UNAVAILABLE, RETRY_AFTER)
                return
        await send_json(send, status, answer)

    def handle(self, body: bytes, received_at: int) -> tuple[int, Any, list[dict[str, Any]]]:
        """(status, answer, events to append before answering) for a request body."""
        raise NotImplementedError


class EventEndpoint(_IngestEndpoint):
    """POST /event: one JSON event."""

    def handle(self, body: bytes, received_at: int) -> tuple[int, Any, list[dict[str, Any]]]:
        try:
            event = parse_event(body, received_at)
        except InvalidEvent as exc:
            return 400, error_body("invalid_event", str(exc), exc.detail()), []
        return 202, {"status": "accepted", "event_id": event["event_id"]}, [event]


class BatchEndpoint(_IngestEndpoint):
    """POST /events: a JSON array or NDJSON; valid events are accepted, invalid ones reported."""

    def __init__(self, max_body_bytes: int, max_events: int):
        super().__init__(max_body_bytes)
        self._max_events = max_events

    def handle(self, body: bytes, received_at: int) -> tuple[int, Any, list[dict[str, Any]]]:
        try:
            results = parse_batch(body, received_at, self._max_events)
        except InvalidBatch as exc:
            body_error = [{"field": "body", "message": str(exc)}]
            return 400, error_body("invalid_batch", str(exc), body_error), []
        events = [r for r in results if not isinstance(r, InvalidEvent)]
        invalid = [(index, r) for index, r in enumerate(results) if isinstance(r, InvalidEvent)]
        if not events:
            detail = [{"index": index, **d} for index, r in invalid for d in r.detail()]
            return 400, error_body("invalid_batch", "no valid event in the batch", detail), []
        rejected = [{"index": index, "detail": r.detail()} for index, r in invalid]
        answer = {
            "accepted": len(events),
            "event_ids": [event["event_id"] for event in events],
            "rejected": rejected,
        }
        return 202, answer, events
