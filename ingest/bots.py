"""Known crawlers, monitors, link previewers and headless browsers, by User-Agent.

HTTP client libraries (curl, python-requests, Go-http-client, okhttp, axios, ...) are not
bots: back ends send events with them legitimately.
"""

from __future__ import annotations

import re

_BOT_PATTERNS = [
    # crawlers that say so: Googlebot, bingbot, AhrefsBot, YandexBot, Applebot, ...
    r"bot\b",
    r"bot/",
    r"crawl",
    r"spider",
    r"slurp",
    r"archiver",
    r"mediapartners-google",
    r"adsbot",
    r"bingpreview",
    r"ia_archiver",
    r"baiduspider",
    r"yandex",
    r"petalbot",
    # headless and automated browsers
    r"headlesschrome",
    r"phantomjs",
    r"lighthouse",
    r"pagespeed",
    r"gtmetrix",
    r"selenium",
    r"webdriver",
    # uptime monitors
    r"pingdom",
    r"uptimerobot",
    r"statuscake",
    r"site24x7",
    r"newrelicpinger",
    r"datadog",
    r"checkly",
    r"freshping",
    r"uptime-kuma",
    r"better ?uptime",
    r"monitis",
    # link previewers
    r"facebookexternalhit",
    r"facebookcatalog",
    r"embedly",
    r"quora link preview",
    r"outbrain",
    r"vkshare",
    r"w3c_validator",
    r"whatsapp",
    r"skypeuripreview",
    r"nuzzel",
    r"redditbot",
    r"iframely",
    r"mastodon",
]

_BOT = re.compile("|".join(_BOT_PATTERNS), re.IGNORECASE)


def is_bot(user_agent: str) -> bool:
    return _BOT.search(user_agent) is not None
