"""CORS for the ingest routes, so the tracker can send events from any site's pages."""

from __future__ import annotations

from starlette.types import Scope

from ingest.asgi import header

_PREFLIGHT = [
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-max-age", b"86400"),
]


class CorsPolicy:
    def __init__(self, origins: str):
        allowed = [origin.strip() for origin in origins.split(",") if origin.strip()]
        self._any = "*" in allowed
        self._allowed = {origin.encode() for origin in allowed}

    def response_headers(self, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        """Headers for a response to this request; None when its Origin is not allowed."""
        if self._any:
            return [(b"access-control-allow-origin", b"*")]
        origin = header(scope, b"origin")
        if origin is None:  # not a browser's cross-origin request: a server, curl, ...
            return []
        if origin not in self._allowed:
            return None
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]

    def preflight_headers(self, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        allowed = self.response_headers(scope)
        if allowed is None:
            return None
        requested = header(scope, b"access-control-request-headers") or b"content-type"
        return [*allowed, *_PREFLIGHT, (b"access-control-allow-headers", requested)]
