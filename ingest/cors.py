"""CORS for the ingest routes, so the tracker can send events from any site's pages."""

from __future__ import annotations

_ANY_ORIGIN = [(b"access-control-allow-origin", b"*")]
_PREFLIGHT = [
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-max-age", b"86400"),
]


class CorsPolicy:
    def __init__(self, origins: str):
        allowed = [origin.strip() for origin in origins.split(",") if origin.strip()]
        self._any = "*" in allowed
        self._allowed = {origin.encode() for origin in allowed}

    def response_headers(self, origin: bytes | None) -> list[tuple[bytes, bytes]] | None:
        """Headers for a response to this request; None when its Origin is not allowed.
        The list may be shared between responses: callers copy it, never change it."""
        if self._any:
            return _ANY_ORIGIN
        if origin is None:  # not a browser's cross-origin request: a server, curl, ...
            return []
        if origin not in self._allowed:
            return None
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]

    def preflight_headers(
        self, origin: bytes | None, requested_headers: bytes | None
    ) -> list[tuple[bytes, bytes]] | None:
        allowed = self.response_headers(origin)
        if allowed is None:
            return None
        requested = requested_headers or b"content-type"
        return [*allowed, *_PREFLIGHT, (b"access-control-allow-headers", requested)]
