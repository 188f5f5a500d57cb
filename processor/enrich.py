"""What an event's url, referrer and User-Agent say, as the columns of its row.

The derivations are pure functions (processor/urls.py, sources.py, useragents.py), each
memoised where its inputs repeat; this module puts them together in the order Plausible
applies them (docs/enrichment.md): the page's URL gives its host, path and campaign tags;
the tagged source (utm_source, source, ref) wins over the referrer's; a Google or Bing
click id stands in for a missing utm_medium. They run in the processor, not at the edge:
its time goes mostly to waiting on PostgreSQL, and a request then pays only for checking
the fields (measured: docs/performance.md).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from processor.sources import visit_source
from processor.urls import PageParts, page_parts
from processor.useragents import client_of

# Distinct pages and referrers remembered: each entry holds at most a few KB of text
# (URLs are at most 2,000 bytes), so a few tens of MB at the very most.
MEMO_ENTRIES = 8_192


class Origin(NamedTuple):
    """Where the visit came from: the columns after path, in the row's order."""

    hostname: str | None
    referrer: str | None
    source: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_content: str | None
    utm_term: str | None
    click_id: str | None


NO_ORIGIN = Origin(None, None, None, None, None, None, None, None, None)
_NO_PAGE = PageParts(None, "/", None, None, None, None, None, None)

# With no utm_medium, an ad click id names the medium of its own network's visits.
_CLICK_MEDIUMS = {("Google", "gclid"): "(gclid)", ("Bing", "msclkid"): "(msclkid)"}


@functools.lru_cache(maxsize=MEMO_ENTRIES)
def page_of(url: str) -> PageParts:
    return page_parts(url)


# A page's fields after its path: what its visit's origin depends on beside the referrer.
_Tags = tuple[str | None, str | None, str | None, str | None, str | None, str | None]


@functools.lru_cache(maxsize=MEMO_ENTRIES)
def origin_of(hostname: str | None, tags: _Tags, referrer: str | None) -> Origin:
    """Keyed without the path: the pages of a site share their origins (most have no tags
    and an internal referrer), so a memo of far fewer keys than pages serves them."""
    utm_source, utm_medium, utm_campaign, utm_content, utm_term, click_id = tags
    source, referrer_text = visit_source(referrer, hostname, utm_source)
    medium = utm_medium
    if medium is None and click_id is not None and source is not None:
        medium = _CLICK_MEDIUMS.get((source, click_id))
    return Origin(
        hostname,
        referrer_text,
        source,
        utm_source,
        medium,
        utm_campaign,
        utm_content,
        utm_term,
        click_id,
    )


def page_and_origin(url: str | None, referrer: str | None) -> tuple[PageParts, Origin]:
    page = _NO_PAGE if url is None else page_of(url)
    if url is None and referrer is None:
        return page, NO_ORIGIN
    if referrer is not None and url is not None and _same_origin(url, referrer):
        # Another page of the same site (most page views after the first): it tells
        # nothing of where the visit came from. Checked here, before the memo keyed by
        # the referrer, which such referrers, all different, would only churn.
        referrer = None
    return page, origin_of(page.hostname, page[2:], referrer)


def _same_origin(url: str, referrer: str) -> bool:
    """Whether both start with the same scheme and host, written alike (the rest of what
    makes a referrer internal, case and www., is visit_source's)."""
    if not url.startswith(("https://", "http://")):
        return False
    end = url.find("/", 8)
    return referrer.startswith(url[: end + 1]) if end != -1 else referrer.startswith(url + "/")


__all__ = ["NO_ORIGIN", "Origin", "client_of", "page_and_origin"]
