"""A site and the checks on what an operator types: pure code, no I/O."""

from __future__ import annotations

import dataclasses
import re
import uuid
import zoneinfo
from datetime import datetime

from common.constants import MAX_SITE_ID, MAX_USER_ID
from common.text import text_fault

# One DNS label: letters, digits and inner hyphens, at most 63 characters (RFC 1123).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_MAX_HOSTNAME = 253
_WILDCARD = "*."


class SiteError(ValueError):
    """What an operator asked for cannot be done; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Site:
    site_id: str
    domains: tuple[str, ...]
    time_zone: str
    created_at: datetime
    updated_at: datetime
    umami_website_id: str | None = None  # the Umami tracker's name for it (a UUID)


def check_site_id(site_id: str) -> str:
    """The site id as events carry it: the same rule as the edge's."""
    return _check_id("site id", site_id, MAX_SITE_ID)


def check_user_id(user_id: str) -> str:
    """A user id as events carry it."""
    return _check_id("user id", user_id, MAX_USER_ID)


def _check_id(what: str, value: str, limit: int) -> str:
    if not value:
        raise SiteError(f"a {what} must not be empty")
    fault = text_fault(value, limit)
    if fault is not None:
        raise SiteError(f"{what} {value!r}: {fault}")
    return value


def check_domain(text: str) -> str:
    """A hostname, or "*." and a hostname for it and all its subdomains, as the browser's
    Origin header names it: lower case, international names in their ASCII (IDNA) form,
    no scheme, port or path."""
    raw = text.strip().rstrip(".").lower()
    wildcard = raw.startswith(_WILDCARD)
    host = raw[len(_WILDCARD) :] if wildcard else raw
    if "://" in host or "/" in host or ":" in host:
        raise SiteError(f"domain {text!r}: a hostname only, without scheme, port or path")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise SiteError(f"domain {text!r}: not a hostname") from None
    labels = host.split(".")
    if len(host) > _MAX_HOSTNAME or not all(_LABEL.match(label) for label in labels):
        raise SiteError(f"domain {text!r}: not a hostname")
    return _WILDCARD + host if wildcard else host


def check_umami_website_id(text: str) -> str:
    """A UUID, in its canonical form, as Umami's tracker names the site."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise SiteError(f"Umami website id {text!r}: not a UUID") from None


def check_time_zone(name: str) -> str:
    """An IANA time zone name (Europe/Berlin, UTC)."""
    if name not in _time_zones():
        raise SiteError(f"time zone {name!r}: not an IANA time zone name such as Europe/Berlin")
    return name


def _time_zones() -> set[str]:
    return zoneinfo.available_timezones() | {"UTC"}
