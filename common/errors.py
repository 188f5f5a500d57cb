"""The one machine-readable shape of every error body the HTTP API returns."""

from collections.abc import Sequence
from typing import Any


def error_body(code: str, message: str, detail: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """{"error": code, "message": text for people, "detail": [{"field", "message"}, ...]}."""
    return {"error": code, "message": message, "detail": list(detail)}
