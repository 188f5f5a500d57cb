"""JSON answers of the reporting routes."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.errors import error_body


class OrjsonResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def unavailable(message: str) -> OrjsonResponse:
    body = error_body("unavailable", message)
    return OrjsonResponse(body, status_code=503, headers={"retry-after": "1"})


def asks_for_csv(request: Request) -> bool:
    """`format=csv`, or `Accept: text/csv`: what the reporting routes answer in CSV."""
    return request.query_params.get("format") == "csv" or "text/csv" in request.headers.get(
        "accept", ""
    )


def attachment(name: str) -> dict[str, str]:
    """The Content-Disposition of a download: the name in safe characters only."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in ".-_") else "_" for c in name)
    return {"content-disposition": f'attachment; filename="{safe}"'}


def csv_response(columns: list[str], rows: list[dict[str, Any]], filename: str) -> Response:
    """Rows as CSV (RFC 4180, a header line first; null as an empty field)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([row.get(column) for column in columns] for row in rows)
    return Response(
        text.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers=attachment(filename),
    )
