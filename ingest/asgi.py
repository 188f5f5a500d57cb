"""Small raw-ASGI helpers for the hot path: read a bounded body, send a JSON answer."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Message, Receive, Send

from common.errors import error_body

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
RETRY_AFTER = [(b"retry-after", b"1")]

# Media types that can carry a JSON body. Browsers' navigator.sendBeacon sends a string
# as text/plain;charset=UTF-8, so every text type is accepted and parsed as JSON.
_JSON_MEDIA_TYPES = (b"application/json", b"application/x-ndjson", b"application/ndjson")


class ClientGone(Exception):
    """The client went away (or was cut off) before its body was whole: nothing of it is
    used and nothing is answered, since a part of a batch is not what was sent."""


class RequestError(Exception):
    """A request refused before validation, with its status and error body."""

    def __init__(self, status: int, code: str, message: str, field: str = "body"):
        super().__init__(message)
        self.status = status
        self.body = error_body(code, message, [{"field": field, "message": message}])


def check_body_headers(headers: dict[bytes, bytes], limit: int, any_type: bool = False) -> None:
    """415 for a declared type that cannot hold JSON (no type at all is accepted; with
    `any_type`, every type is read as JSON); 413 for a body declared larger than `limit`,
    before any of it is read."""
    declared = headers.get(b"content-type")
    if declared is not None and declared != b"application/json" and not any_type:
        _check_content_type(declared)
    length = headers.get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _too_large(limit)


def _check_content_type(declared: bytes) -> None:
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


async def read_rest(first: Message, receive: Receive, limit: int) -> bytes:
    """The body that begins with `first` (a message that did not hold all of it, or held
    too much); 413 as soon as it grows larger than `limit`; ClientGone if it never ends."""
    message = first
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise ClientGone
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
    """Headers and body of a JSON answer (bytes: already rendered)."""
    body = payload if type(payload) is bytes else orjson.dumps(payload)
    return [JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(body))], body


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    response_headers, body = render_json(payload)
    if headers:
        response_headers += headers
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})
