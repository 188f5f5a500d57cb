"""A page URL to what reports group by: hostname, path, campaign tags, click id. Pure code.

As Plausible derives them (docs: contract A.4 of COMPAT-CONTRACTS.md): the host without
"www.", the percent-decoded path, utm_source from utm_source, source or ref, and the name,
never the value, of the first ad click id present. Any text in, storable text out: no NUL,
valid UTF-8 (bad escapes decode to U+FFFD), cut to a byte limit at a character boundary.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote, unquote_plus

from common.constants import MAX_PATH

# Every other field: Plausible's limit for a URL, so a tag may be as long as its URL allows.
MAX_FIELD = 2000

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_SURROGATES = re.compile(r"[\ud800-\udfff]")

# The tagged source: the first of these present with a value.
_SOURCE_KEYS = ("utm_source", "source", "ref")
_CAMPAIGN_KEYS = ("utm_medium", "utm_campaign", "utm_content", "utm_term")
# Ad platforms' click ids, in order of precedence: Google (gclid, and gbraid/wbraid for iOS
# app campaigns), Microsoft, Meta, X, TikTok, LinkedIn.
CLICK_ID_KEYS = ("gclid", "gbraid", "wbraid", "msclkid", "fbclid", "twclid", "ttclid", "li_fat_id")
_WANTED_KEYS = frozenset(_SOURCE_KEYS + _CAMPAIGN_KEYS + CLICK_ID_KEYS)


class PageParts(NamedTuple):
    hostname: str | None
    path: str
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_content: str | None
    utm_term: str | None
    click_id: str | None  # the parameter's name, e.g. "gclid"


class UrlParts(NamedTuple):
    """A URL cut at its delimiters, nothing decoded: what both pages and referrers need."""

    scheme: str | None  # lower case
    host: str | None  # as written, without user info, port or IPv6 brackets
    path: str
    query: str | None


def split_url(url: str) -> UrlParts:
    """Cuts an absolute URL ("https://host/path?q"), a scheme-relative one ("//host/p") or
    a bare path ("/blog?q") into its parts, as RFC 3986 reads them; never raises."""
    url = url.strip().partition("#")[0]
    url, has_query, query = url.partition("?")
    scheme = None
    if (match := _SCHEME.match(url)) is not None:
        scheme = match.group()[:-1].lower()
        url = url[match.end() :]
    if not url.startswith("//"):
        return UrlParts(scheme, None, url, query if has_query else None)
    authority, slash, path = url[2:].partition("/")
    host = authority.rpartition("@")[2]
    if host.startswith("["):  # an IPv6 literal: its colons are not a port's
        host = host[1:].partition("]")[0]
    else:
        host = host.partition(":")[0]
    return UrlParts(scheme, host or None, slash + path, query if has_query else None)


# Most page URLs: a scheme, a host and a path of unreserved characters, nothing to decode
# or look up: cut by one match, the same parts page_parts finds the long way (a property
# test holds both to that), in about half its time (1.9 against 3.6 µs a URL).
_PLAIN_URL = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9.\-]+)(/[A-Za-z0-9._~/\-]*)?")


def page_parts(url: str) -> PageParts:
    plain = _PLAIN_URL.fullmatch(url)
    if plain is not None:
        host, path = plain.groups()
        if path is None or len(path) <= MAX_PATH:
            hostname = site_hostname(host)
            return PageParts(hostname, path or "/", None, None, None, None, None, None)
    return detailed_page_parts(url)


def detailed_page_parts(url: str) -> PageParts:
    _, host, raw_path, query = split_url(url)
    path = unquote(raw_path, errors="replace").rstrip()
    params = _wanted_params(query) if query else {}
    tagged = None
    for key in _SOURCE_KEYS:
        if params.get(key):
            tagged = params[key]
            break
    click_id = None
    for key in CLICK_ID_KEYS:
        if key in params:
            click_id = key
            break
    return PageParts(
        hostname=site_hostname(host),
        path=storable(path, MAX_PATH) or "/",
        utm_source=_field(tagged),
        utm_medium=_field(params.get("utm_medium")),
        utm_campaign=_field(params.get("utm_campaign")),
        utm_content=_field(params.get("utm_content")),
        utm_term=_field(params.get("utm_term")),
        click_id=click_id,
    )


def site_hostname(host: str | None) -> str | None:
    """A host as reports name a site: trimmed, lower case, without a leading "www."."""
    if host is None:
        return None
    host = host.strip().lower().removeprefix("www.")
    return storable(host, MAX_FIELD) or None


def storable(text: str, max_bytes: int) -> str:
    """`text` as PostgreSQL can store it within `max_bytes` bytes of UTF-8: NULs dropped, lone
    surrogates (which have no UTF-8 form) replaced by U+FFFD, cut at a character boundary."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if text.isascii():  # O(1): one byte a character
        return text if len(text) <= max_bytes else text[:max_bytes]
    try:
        encoded = text.encode()
    except UnicodeEncodeError:
        text = _SURROGATES.sub("\ufffd", text)
        encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode(errors="ignore")  # drops a character cut in two


def _wanted_params(query: str) -> dict[str, str]:
    """The query parameters we keep, decoded as a form would be ("+" is a space); of a key
    given twice, the last, as Plausible's decoder keeps it. Others are not decoded at all."""
    params: dict[str, str] = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if "%" in key or "+" in key:
            key = unquote_plus(key, errors="replace")
        if key in _WANTED_KEYS:
            params[key] = unquote_plus(value, errors="replace")
    return params


def _field(value: str | None) -> str | None:
    if not value:
        return None
    return storable(value, MAX_FIELD) or None
