"""Who may read a site's figures: `Authorization: Bearer KEY` with an API key of the
registry (python -m sites key create), checked against the in-memory copy of it.

With no active key at all the reporting API is open, as the original design is (the
server warns at start). Once one exists: no key or an unknown one is 401, a key without
that site 403, a key over its request rate 429 with Retry-After.
"""

from __future__ import annotations

import dataclasses
import hmac

from starlette.requests import Request
from starlette.responses import Response

from common.errors import error_body
from common.ratelimit import TokenBuckets, retry_after
from report.responses import OrjsonResponse, unavailable
from sites.keys import hash_key, prefix_of
from sites.live import LiveRegistry

KEY_REQUIRED = "an API key is required: Bearer KEY"
_CHALLENGE = {"www-authenticate": 'Bearer realm="analytics"'}


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not read a site: each API words its own answer from it."""

    status: int
    code: str  # unauthorized, forbidden, rate_limited, unavailable
    message: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def response(self) -> OrjsonResponse:
        """The answer of our own routes (GET /stats)."""
        if self.code == "unavailable":
            return unavailable(self.message)
        detail = [{"field": "authorization", "message": self.message}]
        body = error_body(self.code, self.message, detail)
        return OrjsonResponse(body, status_code=self.status, headers=self.headers)


class ReportingAccess:
    def __init__(self, registry: LiveRegistry, requests_per_minute: int):
        self._registry = registry
        self.requests_per_minute = requests_per_minute
        rate = requests_per_minute / 60
        self._limits = (
            TokenBuckets(rate, requests_per_minute, "API keys") if requests_per_minute else None
        )

    def refusal(self, request: Request, site_id: str) -> Response | None:
        """None when the request may read `site_id`; else the answer to give."""
        refused = self.check(request, site_id)
        return None if refused is None else refused.response()

    def check(self, request: Request, site_id: str) -> Refusal | None:
        """None when the request may read `site_id`; else why not."""
        readable = self.readable(request)
        if isinstance(readable, Refusal):
            return readable
        if readable is not None and site_id not in readable:
            return Refusal(403, "forbidden", f"this API key may not read site {site_id!r}")
        return None

    def readable(self, request: Request) -> Refusal | frozenset[str] | None:
        """The sites the request may read (None: every site), counted against its key's
        rate; or why it may read none."""
        snapshot = self._registry.snapshot
        if snapshot is None:
            return Refusal(
                503, "unavailable", "the site registry has not been read yet; retry later"
            )
        if not snapshot.keys:
            return None
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return Refusal(401, "unauthorized", KEY_REQUIRED, _CHALLENGE)
        prefix = prefix_of(key) or ""
        rule = snapshot.keys.get(prefix)
        # compare_digest: how long the comparison takes says nothing about the hash.
        if rule is None or not hmac.compare_digest(hash_key(key), rule.key_hash):
            return Refusal(401, "unauthorized", "the API key is not valid", _CHALLENGE)
        if self._limits is not None:
            wait = self._limits.take(prefix)
            if wait:
                headers = {"retry-after": retry_after(wait).decode()}
                return Refusal(429, "rate_limited", "too many requests with this key", headers)
        return rule.site_ids

    def registered_sites(self) -> list[str]:
        snapshot = self._registry.snapshot
        return [] if snapshot is None else sorted(snapshot.sites)

    def time_zone(self, site_id: str) -> str:
        """The site's time zone: UTC for a site not in the registry."""
        snapshot = self._registry.snapshot
        return "UTC" if snapshot is None else snapshot.time_zones.get(site_id, "UTC")
