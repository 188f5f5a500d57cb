"""A User-Agent and a screen width to browser, OS and device class. Pure code.

The browser and OS come from ua-parser (uap-core's rules, package ua-parser-builtins), run
by its Rust accelerator ua-parser-rs where that is installed: about 13 us a parse instead
of 600 (docs/enrichment.md). Versions are major.minor ("142.0", "18.6"), as Plausible keeps
them. Mobile builds of a browser count as that browser ("Chrome Mobile" is "Chrome"), as in
Plausible. What cannot be told is None: reports show it as "(not set)".
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from ua_parser import Domain, Resolver, load_builtins, load_lazy_builtins

from common.constants import AGENT_MEMO_ENTRIES, AGENT_MEMO_MAX_LENGTH
from processor.urls import storable

# Plenty for a browser's family name or a version; uap-core takes some from the agent itself.
MAX_NAME = 128
# Only this much of an agent is parsed: browsers' are 100 to 400 characters, and a regular
# expression's time grows with its input (16 KiB cost 0.5 ms with the accelerator, 50 ms without).
MAX_PARSED = 1024

# The memo is bounded as ingest/bots.py's is (common/constants.py): at most 16,384 x 512
# bytes of keys, about 14 MB with the results (measured: docs/enrichment.md). A longer agent
# is parsed each time.
MEMO_MAX_AGENT = AGENT_MEMO_MAX_LENGTH
MEMO_ENTRIES = AGENT_MEMO_ENTRIES

# CSS pixels of the screen: Plausible's breakpoints, less its "Laptop" (992 and wider is Desktop).
MOBILE_BELOW = 576
TABLET_BELOW = 992

# uap-core's names of mobile builds -> the browser they are.
_SAME_BROWSER = {
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Mobile Safari": "Safari",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera",
    "Opera Mini": "Opera",
}
_TABLET_DEVICES = ("iPad", "Kindle", "Generic Tablet")  # the last: Firefox's "Android; Tablet"
_MOBILE_DEVICES = ("iPhone", "iPod", "Generic Smartphone", "Generic Feature Phone")
_MOBILE_SYSTEMS = ("iOS", "Windows Phone", "Symbian OS", "BlackBerry OS", "KaiOS", "Firefox OS")


class Client(NamedTuple):
    browser: str | None
    browser_version: str | None
    os: str | None
    os_version: str | None
    device: str | None  # "Desktop", "Tablet" or "Mobile"


_Facts = tuple[str | None, str | None, str | None, str | None, str | None]
_NOTHING: _Facts = (None, None, None, None, None)


def client_of(user_agent: str | None, screen_width: int | None) -> Client:
    """What a visitor browses with. The device class comes from the screen width where the
    tracker sent one (CSS pixels), else from the User-Agent."""
    device = None
    if screen_width is not None and screen_width > 0:
        device = device_of_width(screen_width)
    if user_agent and len(user_agent) <= MEMO_MAX_AGENT:
        return _remembered_client(user_agent, device)
    return _client(user_agent, device)


def _client(user_agent: str | None, device: str | None) -> Client:
    """`device`: the screen's class, where the tracker sent its width."""
    browser, browser_version, os, os_version, agent_device = (
        _facts(user_agent) if user_agent else _NOTHING
    )
    return Client(browser, browser_version, os, os_version, device or agent_device)


def device_of_width(screen_width: int) -> str:
    if screen_width < MOBILE_BELOW:
        return "Mobile"
    return "Tablet" if screen_width < TABLET_BELOW else "Desktop"


def load_rules() -> None:
    """Load uap-core's rules now rather than at the first parse."""
    _resolver()


@functools.cache
def _resolver() -> Resolver:
    """uap-core's rules compiled once, at the first parse (0.1 s), not at import."""
    try:
        from ua_parser.regex import Resolver as RustResolver  # needs ua-parser-rs
    except ImportError:
        from ua_parser.basic import Resolver as PythonResolver

        return PythonResolver(load_builtins())
    return RustResolver(load_lazy_builtins())


def _facts(user_agent: str) -> _Facts:
    agent = user_agent[:MAX_PARSED]
    if not agent.isascii():  # the accelerator takes only text that has a UTF-8 form
        agent = storable(agent, 4 * MAX_PARSED)
    parsed = _resolver()(agent, Domain.ALL)
    browser = browser_version = os = os_version = None
    if (found := parsed.user_agent) is not None and found.family != "Other":
        browser = _name(_SAME_BROWSER.get(found.family, found.family))
        browser_version = _major_minor(found.major, found.minor)
    if (system := parsed.os) is not None and system.family != "Other":
        os = _name(system.family)
        os_version = _major_minor(system.major, system.minor)
    device_family = parsed.device.family if parsed.device is not None else ""
    return browser, browser_version, os, os_version, _device_of_agent(agent, os, device_family)


def _device_of_agent(agent: str, os: str | None, device_family: str) -> str | None:
    # Android tablets' browsers leave out the "Mobile" token that Android phones' send.
    if (
        device_family in _TABLET_DEVICES
        or "iPad" in agent
        or (os == "Android" and "Mobile" not in agent)
    ):
        return "Tablet"
    if device_family in _MOBILE_DEVICES or os in _MOBILE_SYSTEMS or "Mobi" in agent:
        return "Mobile"  # "Mobi": Android phones' "Mobile", Opera's "Mobi"
    return "Desktop" if os is not None else None


def _major_minor(major: str | None, minor: str | None) -> str | None:
    if not major:
        return None
    return _name(f"{major}.{minor}" if minor else major)


def _name(text: str) -> str | None:
    return storable(text, MAX_NAME) or None


# Keyed by the agent and the screen's class: at most four entries an agent, all small.
_remembered_client = functools.lru_cache(maxsize=MEMO_ENTRIES)(_client)
