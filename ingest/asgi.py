"""Small raw-ASGI helpers for the hot path: read a bounded body, send a JSON answer."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

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


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def check_content_type(scope: Scope) -> None:
    """415 for a declared type that cannot hold JSON; no type at all is accepted."""
    declared = header(scope, b"content-type")
    if declared is None:
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


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body; 413 for one larger than `limit`, refused before it is read."""
    too_large = RequestError(413, "body_too_large", f"body larger than {limit} bytes")
    length = header(scope, b"content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(payload)
    response_headers = [JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(body))]
    if headers:
        response_headers += headers
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})
