"""Unit tests of the edge's pure parts: client address, bots, time window, CORS, sends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest.bots import is_bot
from ingest.client import ClientResolver
from ingest.cors import CorsPolicy
from ingest.edge import _OneSend
from ingest.validation import InvalidEvent, TimeWindow, validate_event

NOW = 1_800_000_000_000_000


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ("", "198.51.100.1", "203.0.113.7", "198.51.100.1"),  # no proxy trusted
        ("10.0.0.0/8", "10.1.2.3", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.0/8", "198.51.100.1", "203.0.113.7", "198.51.100.1"),  # peer not a proxy
        ("10.0.0.0/8", "10.1.2.3", "1.1.1.1, 203.0.113.7, 10.9.9.9", "203.0.113.7"),
        ("10.0.0.0/8", "10.1.2.3", "garbage, 203.0.113.7", "203.0.113.7"),
        ("10.0.0.0/8", "10.1.2.3", "203.0.113.7, garbage", "10.1.2.3"),
        ("10.0.0.0/8, ::1", "::1", "2001:db8::5", "2001:db8::5"),
    ],
)
def test_the_client_address_trusts_only_configured_proxies(
    trusted: str, peer: str, forwarded: str, client: str
) -> None:
    assert ClientResolver(trusted).client_ip(peer, forwarded.encode()) == client


def test_a_trusted_proxy_without_x_forwarded_for_is_the_client() -> None:
    assert ClientResolver("10.0.0.0/8").client_ip("10.1.2.3", None) == "10.1.2.3"


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Twitterbot/1.0",
        "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
        "TelegramBot (like TwitterBot)",
        "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
        "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1)",
        "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
        "WhatsApp/2.23.20.0",
    ],
)
def test_known_bots_are_recognised(agent: str) -> None:
    assert is_bot(agent)


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
        "curl/8.4.0",
        "python-requests/2.31.0",
        "Go-http-client/1.1",
        "okhttp/4.12.0",
        "axios/1.6.2",
        "Apache-HttpClient/4.5.14 (Java/17.0.8)",
        "Mozilla/5.0 (Linux; Android 10; CUBOT P40) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 11; CUBOT_X30) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36",
        "",
    ],
)
def test_browsers_and_http_libraries_are_not_bots(agent: str) -> None:
    assert not is_bot(agent)


def test_the_time_window_bounds_timestamps_around_receipt() -> None:
    window = TimeWindow(max_future_s=60, max_age_s=3600)

    def check(seconds_from_now: int) -> list[str]:
        moment = (NOW + seconds_from_now * 1_000_000) / 1e6
        body = {
            "site_id": "s",
            "event_type": "e",
            "timestamp": datetime.fromtimestamp(moment, UTC).isoformat(),
        }
        try:
            validate_event(body, NOW, window)
        except InvalidEvent as exc:
            return [e.message for e in exc.errors]
        return []

    assert check(59) == [] and check(-3599) == []
    assert check(61) == ["more than 60 s in the future"]
    assert check(-3601) == ["older than 3600 s"]


def test_cors_policy_echoes_allowed_origins_only() -> None:
    policy = CorsPolicy("https://a.example,https://b.example")
    assert policy.response_headers(b"https://a.example") == [
        (b"access-control-allow-origin", b"https://a.example"),
        (b"vary", b"Origin"),
    ]
    assert policy.response_headers(b"https://c.example") is None
    assert policy.response_headers(None) == []
    assert CorsPolicy("*").response_headers(b"https://c.example") == [
        (b"access-control-allow-origin", b"*")
    ]


class _RecordingTransport:
    """What a response cycle writes, send by send (the part of asyncio's transport it uses)."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sends.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_response_goes_out_in_one_send_with_its_head() -> None:
    transport = _RecordingTransport()
    one = _OneSend(transport)  # type: ignore[arg-type]
    one.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it: at once
    one.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n")
    assert transport.sends == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    one.write(b"{}")
    one.write(b"more")  # a streamed body's later chunks pass straight through
    assert transport.sends[1:] == [
        b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}",
        b"more",
    ]


def test_a_head_held_when_the_cycle_closes_goes_out_first() -> None:
    transport = _RecordingTransport()
    closing = _OneSend(transport)  # type: ignore[arg-type]
    closing.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    closing.close()
    assert transport.sends == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"]
    assert transport.closed and closing.is_closing()
