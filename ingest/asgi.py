"""Small raw-ASGI helpers for the hot path: read a bounded body, send a JSON answer."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from starlette.types import Message, Receive, Scope, Send

from common.errors import error_body

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
RETRY_AFTER = [(b"retry-after", b"1")]

# Media types that can carry a JSON body. Browsers' navigator.sendBeacon sends a string
# as text/plain;charset=UTF-8, so every text type is accepted and parsed as JSON.
_JSON_MEDIA_TYPES = (b"application/json", b"application/x-ndjson", b"application/ndjson")


class RequestError(Exception):
    """A request refused before validation, with its status and error body."""

    def __init__(self, status: int, code: str, message: str, field: str = "body"):
        super().__init__(message)
        self.status = status
        self.body = error_body(code, message, [{"field": field, "message": message}])


class RequestHead(NamedTuple):
    """The request headers that the ingest routes read, found in one pass."""

    content_type: bytes | None
    content_length: bytes | None
    user_agent: bytes
    origin: bytes | None
    forwarded_for: bytes | None


def read_head(scope: Scope) -> RequestHead:
    content_type = content_length = origin = forwarded_for = None
    user_agent = b""
    # Repeated headers: the last one counts (X-Forwarded-For: the nearest proxy's line).
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            content_length = value
        elif name == b"user-agent":
            user_agent = value
        elif name == b"origin":
            origin = value
        elif name == b"x-forwarded-for":
            forwarded_for = value
    return RequestHead(content_type, content_length, user_agent, origin, forwarded_for)


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def check_content_type(declared: bytes | None) -> None:
    """415 for a declared type that cannot hold JSON; no type at all is accepted."""
    if declared is None or declared == b"application/json":  # the common case, at once
        return
    media_type = declared.split(b";", 1)[0].strip().lower()
    if (
        media_type in _JSON_MEDIA_TYPES
        or media_type.startswith(b"text/")
        or (media_type.startswith(b"application/") and media_type.endswith(b"+json"))
    ):
        return
    raise RequestError(
        415, "unsupported_media_type", f"cannot read a {media_type.decode('latin-1')} body as JSON"
    )


async def read_body(receive: Receive, length: bytes | None, limit: int) -> bytes:
    """The request body; 413 for one larger than `limit` (or whose declared `length` is),
    refused before it is read."""
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _too_large(limit)
    message = await receive()
    if not message.get("more_body", False):  # the common case: all in one message
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise _too_large(limit)
        return body
    return await _read_chunks(message, receive, limit)


async def _read_chunks(first: Message, receive: Receive, limit: int) -> bytes:
    message = first
    chunks: list[bytes] = []
    size = 0
    while message["type"] != "http.disconnect":
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    return b"".join(chunks)


def _too_large(limit: int) -> RequestError:
    return RequestError(413, "body_too_large", f"body larger than {limit} bytes")


def render_json(payload: Any) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a JSON answer."""
    body = orjson.dumps(payload)
    return [JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(body))], body


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    response_headers, body = render_json(payload)
    if headers:
        response_headers += headers
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})
