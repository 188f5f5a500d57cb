"""JSON answers of the reporting routes."""

from __future__ import annotations

import orjson
from starlette.responses import JSONResponse

from common.errors import error_body


class OrjsonResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def unavailable(message: str) -> OrjsonResponse:
    body = error_body("unavailable", message)
    return OrjsonResponse(body, status_code=503, headers={"retry-after": "1"})
