"""Known crawlers, monitors, link previewers and headless browsers, by User-Agent.

HTTP client libraries (curl, python-requests, Go-http-client, okhttp, axios, ...) are not
bots: back ends send events with them legitimately.
"""

from __future__ import annotations

import functools
import re

from common.constants import AGENT_MEMO_ENTRIES, AGENT_MEMO_MAX_LENGTH

# Substrings of the lower-cased User-Agent. "bot" alone would also match phones (CUBOT),
# so crawlers that say so are caught by the regular expression below instead.
_BOT_MARKERS = (
    "crawl",
    "spider",
    "slurp",
    "archiver",
    "mediapartners-google",
    "adsbot",
    "bingpreview",
    "baiduspider",
    "yandex",
    "petalbot",
    # headless and automated browsers
    "headlesschrome",
    "phantomjs",
    "lighthouse",
    "pagespeed",
    "gtmetrix",
    "selenium",
    "webdriver",
    # uptime monitors
    "pingdom",
    "uptimerobot",
    "statuscake",
    "site24x7",
    "newrelicpinger",
    "datadog",
    "checkly",
    "freshping",
    "uptime-kuma",
    "betteruptime",
    "better uptime",
    "monitis",
    # link previewers
    "facebookexternalhit",
    "facebookcatalog",
    "embedly",
    "quora link preview",
    "outbrain",
    "vkshare",
    "w3c_validator",
    "whatsapp",
    "skypeuripreview",
    "nuzzel",
    "iframely",
    "mastodon",
)
# Googlebot/2.1, AhrefsBot/7.0;, Twitterbot/1.0, Slackbot-LinkExpanding, Pingdom.com_bot_...,
# "TelegramBot (like TwitterBot)": "bot" ending a word before a delimiter or the end.
_SAYS_BOT = re.compile(r"bot(?:[/_\-;)]|$)")
# Phone makers whose model names end in "bot", as in "(Linux; Android 11; CUBOT_X30)".
_NOT_BOTS = ("cubot",)


# The memo holds at most AGENT_MEMO_ENTRIES x AGENT_MEMO_MAX_LENGTH bytes of keys, about
# 10 MB with their overhead. A longer agent is checked each time it comes: a few
# microseconds, and the edge limits a request's headers to 16 KiB.
MEMO_MAX_AGENT = AGENT_MEMO_MAX_LENGTH
MEMO_ENTRIES = AGENT_MEMO_ENTRIES


def is_bot(user_agent: str) -> bool:
    """Whether the User-Agent is a known bot; remembered, since browsers repeat theirs."""
    if len(user_agent) <= MEMO_MAX_AGENT:
        return _remembered_is_bot(user_agent)
    return _is_bot(user_agent)


def _is_bot(user_agent: str) -> bool:
    agent = user_agent.lower()
    for name in _NOT_BOTS:
        agent = agent.replace(name, "")
    return any(marker in agent for marker in _BOT_MARKERS) or _SAYS_BOT.search(agent) is not None


_remembered_is_bot = functools.lru_cache(maxsize=MEMO_ENTRIES)(_is_bot)
