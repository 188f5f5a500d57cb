"""The reference server: a raw ASGI app that reads the body and answers 202, nothing else.

Served by the same stack with the same options as the real server (uvicorn, uvloop,
httptools, no access log, no proxy headers), so that the ratio is what our code costs.
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from starlette.types import Receive, Send

from ingest.server import SERVER_OPTIONS

_ANSWER = b'{"status":"accepted","event_id":"00000000-0000-7000-8000-000000000000"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_ANSWER))]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})


if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(os.environ["PORT"]), lifespan="off", **SERVER_OPTIONS
    )
