"""POST /event as a raw ASGI endpoint: validate, append to the stream, answer 202."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.types import Receive, Send

from common.errors import error_body
from ingest.asgi import BodyTooLarge, read_body, send_json
from ingest.stream_writer import StreamUnavailable, StreamWriter
from ingest.validation import InvalidEvent, parse_event

RETRY_AFTER = [(b"retry-after", b"1")]


class EventEndpoint:
    """An ASGI app: Starlette's Route hands it the request without wrapping it."""

    def __init__(self, max_body_bytes: int):
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        writer: StreamWriter = scope["state"]["stream_writer"]
        try:
            body = await read_body(scope, receive, self._max_body_bytes)
        except BodyTooLarge:
            message = f"body larger than {self._max_body_bytes} bytes"
            await send_json(send, 413, error_body("body_too_large", message))
            return
        received_at = time.time_ns() // 1000
        try:
            event = parse_event(body, received_at)
        except InvalidEvent as exc:
            await send_json(send, 400, error_body("invalid_event", str(exc), exc.detail()))
            return
        try:
            await writer.append(orjson.dumps(event))
        except StreamUnavailable:
            body_503 = error_body("unavailable", "the event store is unavailable; retry later")
            await send_json(send, 503, body_503, RETRY_AFTER)
            return
        await send_json(send, 202, {"status": "accepted", "event_id": event["event_id"]})
