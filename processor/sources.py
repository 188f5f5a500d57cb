"""Where a visit came from: its referrer and campaign tag to a source and a referrer. Pure code.

Plausible's rules (COMPAT-CONTRACTS.md, A.5 and D): a tagged source (utm_source, source or
ref) wins, named as we know it where we do ("fb" -> "Facebook", "GOOGLE" -> "Google");
otherwise a referrer from another host than the page's, and not from this machine, is named
by Snowplow's list of known referrers (www.google.de -> "Google", t.co -> "Twitter"), or is
its bare host. The stored referrer is that host and the path, without query or trailing "/".
No source at all is Direct / None: (None, None).
"""

from __future__ import annotations

import functools
from pathlib import Path

import orjson

from processor.urls import MAX_FIELD, split_url, storable

# Snowplow's referer-parser database, vendored: version, licence and updating in data/README.md.
REFERERS_FILE = Path(__file__).parent / "data" / "referers.json"

_REFERRER_SCHEMES = ("http", "https", "android-app")
_THIS_MACHINE = ("localhost", "127.0.0.1", "::1")

# Sources Snowplow's list lacks, by host (a subdomain matches too: "de.wikipedia.org"). Written
# here from what these sites' referrers are; a host listed here outranks Snowplow's entry.
HOST_ALIASES = {
    "x.com": "Twitter",  # twitter.com's name since 2023; t.co is in Snowplow's list
    "bsky.app": "Bluesky",
    "threads.com": "Threads",  # threads.net's domain since 2025
    "mastodon.social": "Mastodon",
    "mastodon.online": "Mastodon",
    "wikipedia.org": "Wikipedia",
    "com.reddit.frontpage": "Reddit",  # the Android app, as android-app://com.reddit.frontpage
    "discord.com": "Discord",
    "t.me": "Telegram",
    "teams.microsoft.com": "Microsoft Teams",
    "statics.teams.cdn.office.net": "Microsoft Teams",  # what the Teams desktop app sends
    "producthunt.com": "Product Hunt",
    "lobste.rs": "Lobsters",
    # search engines and assistants; gemini.google.com must not fall through to google.com
    "baidu.com": "Baidu",
    "ya.ru": "Yandex",
    "qwant.com": "Qwant",
    "startpage.com": "Startpage",
    "kagi.com": "Kagi",
    "chatgpt.com": "ChatGPT",
    "chat.openai.com": "ChatGPT",
    "perplexity.ai": "Perplexity",
    "claude.ai": "Claude",
    "gemini.google.com": "Gemini",
    "copilot.microsoft.com": "Copilot",
}
# Short forms people put in utm_source, lower case. Every known source's own name matches
# too, in any case ("facebook", "FACEBOOK"), as do its hosts ("news.ycombinator.com").
TAG_ALIASES = {
    "fb": "Facebook",
    "ig": "Instagram",
    "yt": "Youtube",  # Snowplow's spelling
    "tw": "Twitter",
    "x": "Twitter",
    "li": "LinkedIn",
    "hn": "Hacker News",
    "ddg": "DuckDuckGo",
    "gh": "GitHub",
    "yahoo": "Yahoo!",
    "adwords": "Google",  # Google Ads' old name, still in many tagging templates
    "googleads": "Google",
    "google_ads": "Google",
    "bingads": "Bing",
    "bing_ads": "Bing",
}

# Referrer hosts and tags repeat (a few search engines and networks bring most visits), so
# their names are remembered. DNS names have at most 253 characters: longer ones are no
# known source and are not remembered, which bounds the memo to about 16,384 x 300 bytes.
MEMO_ENTRIES = 16_384
MAX_HOST = 253


def load_referers(path: Path = REFERERS_FILE) -> tuple[dict[str, str], dict[str, str]]:
    """Snowplow's referers file to (host -> source name, lower-case name -> name).

    Entries with a path ("google.de/imgres", Google Images) are left out: a host alone
    decides here, and it is in the list by itself too. A host or name listed twice keeps its
    first entry: the file puts its "unknown medium" section first to win such ties.
    """
    hosts: dict[str, str] = {}
    names: dict[str, str] = {}
    for sources in orjson.loads(path.read_bytes()).values():  # mediums: unknown, email, ...
        for name, entry in sources.items():
            names.setdefault(name.lower(), name)
            for domain in entry["domains"]:
                if "/" not in domain:
                    hosts.setdefault(domain.strip().lower(), name)
    return hosts, names


def _known_sources() -> tuple[dict[str, str], dict[str, str]]:
    hosts, names = load_referers()
    hosts.update(HOST_ALIASES)
    for name in HOST_ALIASES.values():
        names.setdefault(name.lower(), name)
    names.update(TAG_ALIASES)
    return hosts, names


_KNOWN_HOSTS, _KNOWN_NAMES = _known_sources()


def visit_source(
    referrer: str | None, page_hostname: str | None, tagged_source: str | None
) -> tuple[str | None, str | None]:
    """(source, referrer) of a visit; (None, None) is Direct / None.

    page_hostname is the page's host (www. and case do not matter); tagged_source the
    page URL's utm_source, source or ref, e.g. PageParts.utm_source.
    """
    source = None
    stored_referrer = None
    if referrer:
        scheme, host, path, _ = split_url(referrer)
        if scheme in _REFERRER_SCHEMES and host:
            host = host.strip().lower()
            bare = host.removeprefix("www.")
            page = (page_hostname or "").strip().lower().removeprefix("www.")
            if bare != page and host not in _THIS_MACHINE:
                shown = "android-app://" + bare if scheme == "android-app" else bare
                stored_referrer = storable(shown + path.rstrip("/"), MAX_FIELD) or None
                if not tagged_source:
                    source = name_of_host(host) or storable(shown, MAX_FIELD)
    if tagged_source:
        source = name_of_tag(tagged_source)
    return source or None, stored_referrer


def name_of_host(host: str) -> str | None:
    """The known source a lower-case host belongs to: itself listed, or the nearest parent
    domain listed ("foo.mail.google.com" -> "mail.google.com" -> "Gmail"); else None."""
    if len(host) > MAX_HOST:
        return None
    return _remembered_name_of_host(host)


def name_of_tag(tag: str) -> str:
    """A campaign's utm_source as reports show it: a known source's name whatever its case
    or short form ("google", "GOOGLE", "fb", "facebook.com"), else the tag itself."""
    if len(tag) > MAX_HOST:
        return storable(tag, MAX_FIELD)
    return _remembered_name_of_tag(tag)


def _name_of_host(host: str) -> str | None:
    while True:
        name = _KNOWN_HOSTS.get(host)
        if name is not None:
            return name
        host = host.partition(".")[2]
        if "." not in host:  # never a bare top-level domain: "co.uk" names no source
            return None


def _name_of_tag(tag: str) -> str:
    key = tag.strip().lower()
    name = _KNOWN_NAMES.get(key)
    if name is None and "." in key:
        name = _name_of_host(key)
    return name or storable(tag, MAX_FIELD)


_remembered_name_of_host = functools.lru_cache(maxsize=MEMO_ENTRIES)(_name_of_host)
_remembered_name_of_tag = functools.lru_cache(maxsize=MEMO_ENTRIES)(_name_of_tag)
