"""Unit tests of the enrichment library: page URLs, visit sources, User-Agents and countries,
on real-world values. No I/O."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from common.constants import MAX_PATH
from common.text import text_fault
from ingest.geo import CountryLookup
from processor import sources, useragents
from processor.enrich import page_and_origin
from processor.sources import load_referers, name_of_host, visit_source
from processor.urls import MAX_FIELD, PageParts, detailed_page_parts, page_parts, storable
from processor.useragents import Client, client_of

# Any text a str can hold, lone surrogates and NUL included.
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()))

# --- page URLs ---------------------------------------------------------------------------


def parts(
    hostname: str | None,
    path: str,
    source: str | None = None,
    medium: str | None = None,
    campaign: str | None = None,
    content: str | None = None,
    term: str | None = None,
    click_id: str | None = None,
) -> PageParts:
    return PageParts(hostname, path, source, medium, campaign, content, term, click_id)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # a Google Ads landing page, auto-tagged and hand-tagged
        (
            "https://www.example.com/pricing?utm_source=google&utm_medium=cpc&utm_campaign=brand_2026"
            "&utm_term=analytics+tool&utm_content=ad%201&gclid=Cj0KCQiA4L67BhDUARIsADWrl7HdU",
            parts(
                "example.com",
                "/pricing",
                "google",
                "cpc",
                "brand_2026",
                "ad 1",
                "analytics tool",
                "gclid",
            ),
        ),
        # Meta's click id, and a Mailchimp campaign
        (
            "https://shop.example.org/products/blue-shirt?fbclid=IwZXh0bgNhZW0CMTEAAR2x_aem_Ab",
            parts("shop.example.org", "/products/blue-shirt", click_id="fbclid"),
        ),
        (
            "https://blog.example.net/2026/11/launch/?utm_source=newsletter&utm_medium=email"
            "&utm_campaign=november_digest&mc_cid=4f1d2&mc_eid=9a8b",
            parts("blog.example.net", "/2026/11/launch/", "newsletter", "email", "november_digest"),
        ),
        # Microsoft, TikTok, LinkedIn, iOS app campaigns (gbraid)
        (
            "https://example.com/?msclkid=5a1b2c3d4e5f",
            parts("example.com", "/", click_id="msclkid"),
        ),
        ("https://example.com/a?ttclid=E.C.P.CsABx", parts("example.com", "/a", click_id="ttclid")),
        (
            "https://example.com/a?li_fat_id=3f2a-11",
            parts("example.com", "/a", click_id="li_fat_id"),
        ),
        (
            "https://example.com/a?gbraid=0AAAAA&wbraid=Cl",
            parts("example.com", "/a", click_id="gbraid"),
        ),
        # the first click id in precedence order, not in URL order; a present key, even empty
        ("https://example.com/?fbclid=x&gclid=", parts("example.com", "/", click_id="gclid")),
        # source and ref stand in for utm_source; an empty one does not count
        ("https://example.com/?ref=producthunt", parts("example.com", "/", "producthunt")),
        ("https://example.com/?utm_source=&source=&ref=hn", parts("example.com", "/", "hn")),
        ("https://example.com/?source=github&ref=hn", parts("example.com", "/", "github")),
        # a key given twice: the last, as Plausible's decoder keeps it
        ("https://example.com/?utm_medium=a&utm_medium=b", parts("example.com", "/", medium="b")),
        # a percent-encoded key is still that key; "+" is a space in values, "%2B" a plus
        (
            "https://example.com/?utm%5Fsource=enc&utm_term=c%2B%2B+book",
            parts("example.com", "/", "enc", term="c++ book"),
        ),
        # bare paths, as the Events API and trackers in apps send them
        ("/blog?utm_source=x", parts(None, "/blog", "x")),
        ("/", parts(None, "/")),
        # case and trailing slash of the path are kept; host case and www. are not
        ("https://WWW.Example.COM/About-Us/", parts("example.com", "/About-Us/")),
        ("https://www2.example.com/x", parts("www2.example.com", "/x")),
        # user info, port, IPv6 literal, scheme-relative
        ("https://user:secret@www.example.com:8443/a", parts("example.com", "/a")),
        ("http://[2001:db8::1]:8080/x", parts("2001:db8::1", "/x")),
        ("//cdn.example.com/x", parts("cdn.example.com", "/x")),
        # percent-encoded paths are decoded: accents, Cyrillic, emoji
        ("https://example.com/caf%C3%A9/cr%C3%A8me", parts("example.com", "/café/crème")),
        (
            "https://ru.example.com/%D0%BA%D0%BE%D0%BD%D1%82%D0%B0%D0%BA%D1%82%D1%8B",
            parts("ru.example.com", "/контакты"),
        ),
        ("https://example.com/%F0%9F%9A%80", parts("example.com", "/🚀")),
        # malformed escapes stay as written; invalid UTF-8 becomes U+FFFD; NUL is dropped
        ("https://example.com/100%/x%zz%4", parts("example.com", "/100%/x%zz%4")),
        ("https://example.com/%ff%C3", parts("example.com", "/\ufffd\ufffd")),
        ("https://example.com/a%00b", parts("example.com", "/ab")),
        # trailing whitespace of the path is trimmed, an empty path is "/", fragments ignored
        ("https://example.com/docs%20%20", parts("example.com", "/docs")),
        ("https://example.com", parts("example.com", "/")),
        ("https://example.com/#/app?utm_source=hidden", parts("example.com", "/")),
        ("https://example.com/?", parts("example.com", "/")),
        # no host at all
        ("", parts(None, "/")),
        ("https://", parts(None, "/")),
        ("https://www./x", parts(None, "/x")),
    ],
)
def test_page_urls_give_plausibles_parts(url: str, expected: PageParts) -> None:
    assert page_parts(url) == expected


def test_a_long_path_is_cut_at_a_character_boundary_within_its_limit() -> None:
    path = page_parts("https://example.com/" + "%C3%A9" * 1500).path  # 1,500 x 2 bytes
    assert len(path.encode()) == MAX_PATH - 1  # "/" + 1,023 é; the next é would not fit whole
    assert path == "/" + "é" * 1023


def test_long_tags_are_cut_at_a_character_boundary_within_their_limit() -> None:
    campaign = page_parts("/?utm_campaign=" + "%E2%9C%93" * 1000).utm_campaign  # 3,000 bytes
    assert campaign == "✓" * 666
    assert len(storable("x" * 5000, MAX_FIELD)) == MAX_FIELD


def test_storable_replaces_lone_surrogates_and_drops_nul() -> None:
    assert storable("a\ud800b\x00c", 10) == "a\ufffdbc"


def _assert_storable(value: str | None, max_bytes: int) -> None:
    assert value is None or text_fault(value, max_bytes) is None, repr(value)


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        ANY_TEXT,
        st.builds(
            lambda host, path, query: f"https://{host}/{path}?{query}",
            st.text(max_size=30),
            st.text(max_size=60),
            st.text(alphabet=st.sampled_from("utm_sourcegclid=&%+ \x00\ud800é0F"), max_size=80),
        ),
    )
)
def test_any_text_gives_storable_parts(url: str) -> None:
    result = page_parts(url)
    _assert_storable(result.path, MAX_PATH)
    assert result.path
    for value in result[2:7]:
        _assert_storable(value, MAX_FIELD)
    _assert_storable(result.hostname, MAX_FIELD)
    if result.hostname is not None:
        assert result.hostname == result.hostname.lower()
        assert not result.hostname.startswith("www.")


# --- visit sources -----------------------------------------------------------------------

PAGE = "example.com"


@pytest.mark.parametrize(
    ("referrer", "source", "stored"),
    [
        # Google, on any of its country domains
        ("https://www.google.com/", "Google", "google.com"),
        ("https://www.google.de/", "Google", "google.de"),
        ("https://www.google.co.uk/", "Google", "google.co.uk"),
        ("https://www.google.com.br/", "Google", "google.com.br"),
        ("https://www.google.co.jp/search?q=analytics", "Google", "google.co.jp/search"),
        (
            "android-app://com.google.android.googlequicksearchbox/",
            "Google",
            "android-app://com.google.android.googlequicksearchbox",
        ),
        ("https://www.bing.com/search?q=privacy+analytics&form=QBLH", "Bing", "bing.com/search"),
        ("https://duckduckgo.com/", "DuckDuckGo", "duckduckgo.com"),
        ("https://search.brave.com/search?q=x", "Brave", "search.brave.com/search"),
        ("https://yandex.ru/search/?text=x", "Yandex", "yandex.ru/search"),
        # Facebook's link shims, mobile site and app
        (
            "https://l.facebook.com/l.php?u=https%3A%2F%2Fexample.com%2F&h=AT0",
            "Facebook",
            "l.facebook.com/l.php",
        ),
        ("https://m.facebook.com/", "Facebook", "m.facebook.com"),
        ("https://www.facebook.com/", "Facebook", "facebook.com"),
        ("https://lm.facebook.com/l.php?u=x", "Facebook", "lm.facebook.com/l.php"),
        ("https://l.instagram.com/?u=x", "Instagram", "l.instagram.com"),
        # Twitter's shortener and its new name (our alias)
        ("https://t.co/", "Twitter", "t.co"),
        ("https://t.co/Ab3dE5fGh", "Twitter", "t.co/Ab3dE5fGh"),
        ("https://x.com/someone/status/1", "Twitter", "x.com/someone/status/1"),
        # Reddit: listed as reddit.com, reached from its subdomains
        (
            "https://www.reddit.com/r/selfhosted/comments/abc/title/",
            "Reddit",
            "reddit.com/r/selfhosted/comments/abc/title",
        ),
        ("https://old.reddit.com/r/python/", "Reddit", "old.reddit.com/r/python"),
        ("https://out.reddit.com/t3_abc?url=x", "Reddit", "out.reddit.com/t3_abc"),
        (
            "https://news.ycombinator.com/item?id=42000000",
            "Hacker News",
            "news.ycombinator.com/item",
        ),
        ("https://www.linkedin.com/feed/", "LinkedIn", "linkedin.com/feed"),
        ("https://lnkd.in/eXaMpLe", "LinkedIn", "lnkd.in/eXaMpLe"),
        ("https://www.youtube.com/watch?v=x", "Youtube", "youtube.com/watch"),
        ("https://github.com/org/repo", "GitHub", "github.com/org/repo"),
        ("https://mail.google.com/mail/u/0/", "Gmail", "mail.google.com/mail/u/0"),
        ("https://bsky.app/profile/someone", "Bluesky", "bsky.app/profile/someone"),
        (
            "https://de.wikipedia.org/wiki/Webanalyse",
            "Wikipedia",
            "de.wikipedia.org/wiki/Webanalyse",
        ),
        ("https://gemini.google.com/app", "Gemini", "gemini.google.com/app"),
        ("https://chatgpt.com/", "ChatGPT", "chatgpt.com"),
        # Android apps: known ones by name, others as android-app://package
        ("android-app://com.google.android.gm/", "Gmail", "android-app://com.google.android.gm"),
        ("android-app://com.slack", "Slack", "android-app://com.slack"),
        (
            "android-app://org.example.reader/",
            "android-app://org.example.reader",
            "android-app://org.example.reader",
        ),
        # unknown sites: their bare host; the path kept, query and trailing slashes not
        (
            "https://www.someones-blog.net/2026/11/post//?utm=x#top",
            "someones-blog.net",
            "someones-blog.net/2026/11/post",
        ),
        (
            "http://forum.example.org:8080/thread/9",
            "forum.example.org",
            "forum.example.org/thread/9",
        ),
    ],
)
def test_referrers_are_named_by_their_known_source_or_host(
    referrer: str, source: str, stored: str
) -> None:
    assert visit_source(referrer, PAGE, None) == (source, stored)


@pytest.mark.parametrize(
    ("referrer", "page"),
    [
        ("https://example.com/pricing", "example.com"),
        ("https://www.example.com/", "example.com"),  # www. does not make another host
        ("https://EXAMPLE.com/x", "www.example.com"),
        ("http://localhost:3000/", "example.com"),
        ("http://127.0.0.1:8000/x", "example.com"),
        ("http://[::1]:8080/", "example.com"),
        ("file:///home/me/page.html", "example.com"),  # only http, https and android-app
        ("about:blank", "example.com"),
        ("ftp://files.example.org/", "example.com"),
        ("not a url", "example.com"),
        ("https:///nohost", "example.com"),
        ("", "example.com"),
        (None, "example.com"),
    ],
)
def test_internal_local_and_invalid_referrers_are_direct(referrer: str | None, page: str) -> None:
    assert visit_source(referrer, page, None) == (None, None)


@pytest.mark.parametrize(
    ("url", "referrer"),
    [
        ("https://shop.example/b", "https://shop.example/a"),
        ("https://shop.example/b?utm_source=mail", "https://shop.example/"),
        ("https://shop.example", "https://shop.example/a?q=1"),
        # Not the same origin as written, though internal: left to visit_source.
        ("https://shop.example/b", "https://WWW.shop.example/a"),
        # Another site whose name begins like this one's.
        ("https://shop.example/b", "https://shop.example.evil.net/a"),
        ("https://shop.example", "https://shop.example.evil.net/"),
        ("/b", "https://shop.example/a"),
    ],
)
def test_a_referrer_of_the_same_origin_is_skipped_as_visit_source_would(
    url: str, referrer: str
) -> None:
    """page_and_origin passes over a referrer of the page's own scheme and host before
    its memo: the origin is what the full derivation gives."""
    page, origin = page_and_origin(url, referrer)
    source, stored_referrer = visit_source(referrer, page.hostname, page.utm_source)
    assert (origin.source, origin.referrer) == (source, stored_referrer)


@pytest.mark.parametrize(
    ("tag", "source"),
    [
        ("google", "Google"),
        ("GOOGLE", "Google"),
        ("Google", "Google"),
        ("fb", "Facebook"),
        ("facebook", "Facebook"),
        ("ig", "Instagram"),
        ("twitter", "Twitter"),
        ("x", "Twitter"),
        ("adwords", "Google"),
        ("duckduckgo", "DuckDuckGo"),
        ("hacker news", "Hacker News"),
        ("hn", "Hacker News"),
        ("linkedin", "LinkedIn"),
        ("news.ycombinator.com", "Hacker News"),  # a known host as a tag
        ("www.facebook.com", "Facebook"),
        ("newsletter", "newsletter"),  # unknown tags are kept as written
        ("Spring Mailing", "Spring Mailing"),
    ],
)
def test_a_tagged_source_wins_and_is_named_case_insensitively(tag: str, source: str) -> None:
    # the referrer is still stored: Plausible keeps both
    assert visit_source("https://www.bing.com/search?q=x", PAGE, tag) == (source, "bing.com/search")
    assert visit_source(None, PAGE, tag) == (source, None)


def test_the_referrer_list_keeps_hosts_only_and_the_first_entry_of_each(tmp_path: Path) -> None:
    data = {
        "unknown": {"Google": {"domains": ["support.google.com"]}},
        "search": {
            "Google Search": {"domains": ["Support.Google.com", "google.com"]},
            "Google Images": {"domains": ["google.com/imgres"]},
        },
    }
    path = tmp_path / "referers.json"
    path.write_bytes(orjson.dumps(data))
    hosts, names = load_referers(path)
    assert hosts == {"support.google.com": "Google", "google.com": "Google Search"}
    assert names == {
        "google": "Google",
        "google search": "Google Search",
        "google images": "Google Images",
    }


def test_the_vendored_referrer_list_loads_whole() -> None:
    hosts, names = load_referers()
    assert len(hosts) > 1800 and len(names) > 400
    assert hosts["duckduckgo.com"] == "DuckDuckGo"


def test_hosts_are_matched_by_their_nearest_listed_parent_but_never_a_bare_suffix() -> None:
    assert name_of_host("foo.mail.google.com") == "Gmail"
    assert name_of_host("mail.google.com") == "Gmail"
    assert name_of_host("co.uk") is None
    assert name_of_host("unknown-site.co.uk") is None


def test_host_names_are_remembered_but_not_overlong_hosts() -> None:
    sources._remembered_name_of_host.cache_clear()
    assert name_of_host("www.google.fr") == "Google"
    assert sources._remembered_name_of_host.cache_info().currsize == 1
    assert name_of_host("a." * 200 + "google.fr") is None  # no DNS name is that long
    assert sources._remembered_name_of_host.cache_info().currsize == 1


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), ANY_TEXT, st.builds("https://{}/{}".format, ANY_TEXT, ANY_TEXT)),
    st.one_of(st.none(), ANY_TEXT),
    st.one_of(st.none(), ANY_TEXT),
)
def test_any_input_gives_a_storable_source_and_referrer(
    referrer: str | None, page: str | None, tag: str | None
) -> None:
    source, stored = visit_source(referrer, page, tag)
    _assert_storable(source, MAX_FIELD)
    _assert_storable(stored, MAX_FIELD)
    assert source != "" and stored != ""


# --- User-Agents -------------------------------------------------------------------------

CHROME_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36"
SAFARI_IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/26.1 Mobile/15E148 Safari/604.1"


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (CHROME_WINDOWS, Client("Chrome", "142.0", "Windows", "10", "Desktop")),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/26.1 Safari/605.1.15",
            Client("Safari", "26.1", "Mac OS X", "10.15", "Desktop"),
        ),
        (SAFARI_IPHONE, Client("Safari", "26.1", "iOS", "18.6", "Mobile")),
        (
            "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
            Client("Safari", "17.4", "iOS", "17.4", "Tablet"),
        ),
        (
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Mobile Safari/537.36",
            Client("Chrome", "142.0", "Android", "10", "Mobile"),
        ),
        (  # Samsung Internet on a Galaxy Tab S9: no "Mobile" token
            "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/28.0 Chrome/130.0.0.0 Safari/537.36",
            Client("Samsung Internet", "28.0", "Android", "14", "Tablet"),
        ),
        (
            "Mozilla/5.0 (Linux; Android 15; SM-S928B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/28.0 Chrome/130.0.0.0 Mobile Safari/537.36",
            Client("Samsung Internet", "28.0", "Android", "15", "Mobile"),
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:145.0) Gecko/20100101 Firefox/145.0",
            Client("Firefox", "145.0", "Linux", None, "Desktop"),
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36 Edg/142.0.0.0",
            Client("Edge", "142.0", "Windows", "10", "Desktop"),
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/142.0.7444.77 Mobile/15E148 Safari/604.1",
            Client("Chrome", "142.0", "iOS", "18.6", "Mobile"),
        ),
        (
            "Mozilla/5.0 (Android 15; Mobile; rv:145.0) Gecko/145.0 Firefox/145.0",
            Client("Firefox", "145.0", "Android", "15", "Mobile"),
        ),
        (
            "Mozilla/5.0 (Android 14; Tablet; rv:145.0) Gecko/145.0 Firefox/145.0",
            Client("Firefox", "145.0", "Android", "14", "Tablet"),
        ),
        (
            "Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/52.0.2743.116 Mobile Safari/537.36 Edge/15.15063",
            Client("Edge", "15.15063", "Windows Phone", "10.0", "Mobile"),
        ),
        (  # a Kindle Fire
            "Mozilla/5.0 (Linux; U; Android 4.4.4; en-us; KFFOWI Build/KTU84M) AppleWebKit/537.36 (KHTML, like Gecko) Silk/3.68 like Chrome/39.0.2171.93 Safari/537.36",
            Client("Amazon Silk", "3.68", "Android", "4.4", "Tablet"),
        ),
        (
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36",
            Client("Chrome", "142.0", "Chrome OS", "14541.0", "Desktop"),
        ),
        # what is not a browser has no device; nothing at all is unknown throughout
        ("curl/8.5.0", Client("curl", "8.5", None, None, None)),
        ("Mozilla/5.0", Client(None, None, None, None, None)),
        ("", Client(None, None, None, None, None)),
        (None, Client(None, None, None, None, None)),
    ],
)
def test_real_user_agents_give_browser_os_and_device(agent: str | None, expected: Client) -> None:
    assert client_of(agent, None) == expected


@pytest.mark.parametrize(
    ("width", "device"),
    [
        (320, "Mobile"),
        (575, "Mobile"),
        (576, "Tablet"),
        (991, "Tablet"),
        (992, "Desktop"),
        (2560, "Desktop"),
    ],
)
def test_a_screen_width_decides_the_device_over_the_user_agent(width: int, device: str) -> None:
    assert client_of(SAFARI_IPHONE, width).device == device
    assert client_of(CHROME_WINDOWS, width).device == device
    assert client_of(None, width) == Client(None, None, None, None, device)


def test_the_native_accelerator_parses() -> None:
    # Without ua-parser-rs every uncached parse takes ~45 times longer (docs/enrichment.md).
    assert type(useragents._resolver()).__module__ == "ua_parser.regex"


def test_agents_are_remembered_up_to_the_memo_length_only() -> None:
    useragents._remembered_client.cache_clear()
    client_of(CHROME_WINDOWS, None)
    client_of(CHROME_WINDOWS, 1000)
    client_of(CHROME_WINDOWS, 1200)  # the same class of screen as 1000
    assert useragents._remembered_client.cache_info().currsize == 2
    long_agent = CHROME_WINDOWS + " " + "x" * useragents.MEMO_MAX_AGENT
    assert client_of(long_agent, None).browser == "Chrome"
    assert useragents._remembered_client.cache_info().currsize == 2


def test_only_the_start_of_a_huge_agent_is_parsed() -> None:
    # whole, this would be Edge: its token comes last
    assert client_of(SAFARI_IPHONE + " " + "x" * 2000 + " Edg/99.0", None).browser == "Safari"


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), ANY_TEXT, st.builds(CHROME_WINDOWS.__add__, ANY_TEXT)),
    st.one_of(st.none(), st.integers(min_value=-5, max_value=10**6)),
)
def test_any_agent_gives_storable_names(agent: str | None, width: int | None) -> None:
    client = client_of(agent, width)
    for value in client:
        _assert_storable(value, useragents.MAX_NAME)
    assert client.device in (None, "Desktop", "Tablet", "Mobile")


# --- countries ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def countries() -> CountryLookup:
    return CountryLookup()


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("8.8.8.8", "US"),  # Google Public DNS
        ("2001:4860:4860::8888", "US"),
        ("2606:4700:4700::1111", "US"),  # Cloudflare's resolver
        ("1.1.1.1", "AU"),  # APNIC's block, registered in Australia
        ("193.0.6.139", "NL"),  # the RIPE NCC's own network
        ("2001:67c:2e8::2", "NL"),
        ("133.11.0.1", "JP"),  # the University of Tokyo
        ("2001:200::1", "JP"),  # WIDE project
        ("200.160.2.3", "BR"),  # NIC.br
        ("2001:12ff::1", "BR"),
        ("77.88.8.8", "RU"),  # Yandex DNS
        ("114.114.114.114", "CN"),
        ("::ffff:8.8.8.8", "US"),  # IPv4 seen through a dual-stack socket
        ("::FFFF:193.0.6.139", "NL"),
    ],
)
def test_public_addresses_have_their_registered_country(
    countries: CountryLookup, ip: str, country: str
) -> None:
    assert countries.country_of(ip) == country


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.10",
        "127.0.0.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.10.20",  # link-local
        "192.0.2.1",  # documentation
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.251",  # multicast
        "240.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "::1",
        "::",
        "fe80::1",
        "fd12:3456:789a::1",  # unique local
        "2001:db8::1",  # documentation
        "ff02::1",
        "::ffff:10.0.0.1",
        "not an address",
        "",
        "8.8.8.8:53",
    ],
)
def test_private_reserved_and_invalid_addresses_have_no_country(
    countries: CountryLookup, ip: str
) -> None:
    assert countries.country_of(ip) is None


@hypothesis_settings(max_examples=1000)
@given(
    scheme=st.sampled_from(["https://", "http://", "HTTPS://", "hTtp://", "ftp://", "//", ""]),
    host=st.text(alphabet="aZ09.-_:@[]%w ", max_size=12),
    path=st.text(alphabet="/aZ9._~-%?#&=+ \u00e9", max_size=16),
    long_path=st.booleans(),
)
def test_a_plain_urls_short_way_finds_the_long_ways_parts(
    scheme: str, host: str, path: str, long_path: bool
) -> None:
    url = scheme + host + path + ("/x" * MAX_PATH if long_path else "")
    assert page_parts(url) == detailed_page_parts(url)
