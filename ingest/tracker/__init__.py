"""GET /script.js: our tracker (script.js beside this file), minified and gzipped once at
start, then served from memory with an ETag and cache headers.

The minifier is rjsmin (a C extension, no Node toolchain): it strips comments and
whitespace and renames nothing, which is why the source keeps repeated names short.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import rjsmin
from starlette.types import Receive, Scope, Send

SOURCE = Path(__file__).with_name("script.js")

Headers = list[tuple[bytes, bytes]]

# A deploy reaches a returning visitor within the hour; a copy up to a day older may run
# once more while the browser fetches the new one in the background.
CACHE_CONTROL = b"public, max-age=3600, stale-while-revalidate=86400"
_SHARED_HEADERS: Headers = [
    (b"cache-control", CACHE_CONTROL),
    (b"vary", b"Accept-Encoding"),
    (b"access-control-allow-origin", b"*"),
    # Pages that isolate themselves (Cross-Origin-Embedder-Policy) load it all the same.
    (b"cross-origin-resource-policy", b"cross-origin"),
    (b"x-content-type-options", b"nosniff"),
]


@dataclass(frozen=True)
class BuiltScript:
    minified: bytes
    gzipped: bytes
    etag: bytes  # strong, quoted: a hash of the minified bytes; "-gzip" marks the other one

    @property
    def gzip_etag(self) -> bytes:
        return self.etag[:-1] + b'-gzip"'


def build(source: str) -> BuiltScript:
    minified = rjsmin.jsmin(source).encode()
    # mtime 0: the same source gives the same bytes on every server and every start.
    gzipped = gzip.compress(minified, compresslevel=9, mtime=0)
    digest = hashlib.sha256(minified).hexdigest()[:20]
    return BuiltScript(minified, gzipped, b'"%s"' % digest.encode())


def accepts_gzip(accept_encoding: bytes | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (RFC 9110 12.5.3: by name, or by *
    where gzip is not named; q=0 refuses)."""
    if not accept_encoding:
        return False
    wildcard = False
    for item in accept_encoding.lower().split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip()
        if coding in (b"gzip", b"x-gzip"):
            return _quality(params) > 0
        if coding == b"*":
            wildcard = _quality(params) > 0
    return wildcard


def _quality(params: bytes) -> float:
    for param in params.split(b";"):
        name, _, value = param.partition(b"=")
        if name.strip() == b"q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0


def matching_etag(if_none_match: bytes, current: tuple[bytes, ...]) -> bytes | None:
    """The current tag that If-None-Match names (weak comparison, as RFC 9110 13.1.2 asks),
    or None; * names the first, the tag of what would be sent."""
    for item in if_none_match.split(b","):
        tag = item.strip().removeprefix(b"W/")
        if tag == b"*":
            return current[0]
        if tag in current:
            return tag
    return None


class TrackerScript:
    """GET and HEAD /script.js: gzip where the client takes it, 304 for a copy it holds."""

    def __init__(self, source: Path = SOURCE):
        self.script = build(source.read_text(encoding="utf-8"))
        self._identity = (
            self.script.minified,
            self._headers(self.script.etag, self.script.minified),
        )
        self._gzip = (
            self.script.gzipped,
            [
                *self._headers(self.script.gzip_etag, self.script.gzipped),
                (b"content-encoding", b"gzip"),
            ],
        )
        self._etags = (self.script.etag, self.script.gzip_etag)

    @staticmethod
    def _headers(etag: bytes, body: bytes) -> Headers:
        return [
            (b"content-type", b"application/javascript; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"etag", etag),
            *_SHARED_HEADERS,
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        if accepts_gzip(headers.get(b"accept-encoding")):
            body, response_headers = self._gzip
            etags = self._etags[::-1]
        else:
            body, response_headers = self._identity
            etags = self._etags
        if_none_match = headers.get(b"if-none-match")
        held = matching_etag(if_none_match, etags) if if_none_match else None
        if held is not None:
            # Either encoding of the current script is current: the tag the client holds
            # goes back, so that its cache refreshes that copy.
            not_modified = [(b"etag", held), *_SHARED_HEADERS]
            await send({"type": "http.response.start", "status": 304, "headers": not_modified})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
