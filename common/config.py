"""Settings read once from the environment into one immutable object per process."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import sys
from collections.abc import Mapping
from urllib.parse import unquote_plus, urlsplit

from common import constants

_BOOLEANS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}

# The accepted range of each integer setting and the unit it is counted in: the one
# table that from_env checks, the tests walk and the README's Configuration states.
RANGES: dict[str, tuple[int, int, str]] = {
    "port": (1, 65_535, ""),
    "health_port": (0, 65_535, ""),
    "metrics_port": (0, 65_535, ""),
    "batch_size": (1, 10_000, "entries"),
    "writers": (1, 32, "consumers"),
    "block_ms": (10, 60_000, "ms"),  # 0 would make XREADGROUP block forever
    # Much less would steal batches that live consumers are still writing (wasted work,
    # never a wrong figure: storage is idempotent); 0 would take every pending entry.
    "claim_min_idle_ms": (100, 86_400_000, "ms"),
    "claim_interval_ms": (10, 3_600_000, "ms"),
    # Under 2, one redelivery after a crash would already single an entry out.
    "max_deliveries": (2, 1_000, "deliveries"),
    "maintenance_interval_ms": (10, 3_600_000, "ms"),
    "fold_interval_ms": (10, 3_600_000, "ms"),
    "retention_days": (0, 36_500, "days"),  # a huge value overflows the cutoff date
    "redis_timeout_ms": (10, 60_000, "ms"),
    "max_body_bytes": (1_024, 67_108_864, "bytes"),
    "max_batch_events": (1, 10_000, "events"),
    "max_future_seconds": (0, 31_622_400, "s"),
    "max_age_seconds": (0, 315_360_000, "s"),
    "max_backlog": (1, 1_000_000_000, "events"),
    "header_timeout_ms": (100, 600_000, "ms"),
    "keep_alive_ms": (100, 600_000, "ms"),
    "body_timeout_ms": (100, 600_000, "ms"),
    "max_connections": (16, 1_000_000, "connections"),
    "ingest_processes": (1, 64, "processes"),
    "stream_shards": (1, 64, "streams"),
    "max_connections_per_address": (0, 1_000_000, "connections"),
    "registry_refresh_ms": (100, 60_000, "ms"),
    "report_cache_ms": (0, 60_000, "ms"),
    "address_rate_limit": (0, 1_000_000_000, "requests/s"),
    "site_rate_limit": (0, 1_000_000_000, "events/s"),
    "key_rate_limit": (0, 1_000_000_000, "requests/min"),
}
SITES_MODES = ("open", "registered")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
URL_SCHEMES = {
    "redis_url": ("redis", "rediss", "unix"),
    "database_url": ("postgresql", "postgres"),
}
# Names that go into Redis keys, logs and the bind call as they are.
_NAMES = ("host", "stream_key", "consumer_group", "consumer_name")


class ConfigError(ValueError):
    """An environment variable holds a value the services cannot use."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/analytics"
    host: str = "0.0.0.0"
    port: int = 3000
    stream_key: str = constants.STREAM_KEY
    consumer_group: str = constants.CONSUMER_GROUP
    consumer_name: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"
    )
    # Entries per read and per transaction: an upper bound, a quiet stream gives less.
    batch_size: int = 2_000
    # Consumers per processor process, each with its own database connection: while one
    # waits for PostgreSQL, another decodes or commits.
    writers: int = 2
    block_ms: int = 1000
    claim_min_idle_ms: int = 60_000
    claim_interval_ms: int = 5_000
    # An entry delivered more often than this without being stored is stored by itself.
    max_deliveries: int = 5
    # How often a processor trims acknowledged entries and keeps partitions ahead.
    maintenance_interval_ms: int = 5_000
    # Count visits and dimensions (docs/metrics.md): off, only page views, events and
    # visitors per site, day and page, at about twice the speed (docs/performance.md).
    count_visits: bool = False
    # How often a processor adds the visits that have ended to the dimension rollups.
    fold_interval_ms: int = 1_000
    # Drop the monthly partitions of `events` older than this many days (0: keep all).
    retention_days: int = 0
    redis_timeout_ms: int = 500
    max_body_bytes: int = 1_048_576
    max_batch_events: int = 500
    # Timestamps further ahead of the time of receipt, or older, are refused (400).
    max_future_seconds: int = 3_600
    max_age_seconds: int = 7 * 86_400
    # POST answers 503 while the consumer group's backlog (pending + lag) exceeds this.
    max_backlog: int = 1_000_000
    # Comma-separated origins allowed to send events from browsers; "*" allows any.
    cors_origins: str = "*"
    # Comma-separated proxy addresses or networks whose X-Forwarded-For is believed.
    trusted_proxies: str = ""
    # Store the client's IP address and User-Agent with each event (off: only the hash).
    store_client_info: bool = False
    log_level: str = "INFO"
    # text: one readable line per record; json: one JSON object per line, for collectors.
    log_format: str = "text"
    # The processor's GET /health (what it fails at) on this port of HOST; 0: none.
    health_port: int = 0
    # The processor's GET /metrics (Prometheus) on this port of HOST; 0: none.
    metrics_port: int = 0
    # open: events for any site_id are stored; registered: only for sites in the registry
    # (python -m sites), and browser events only from the site's domains.
    sites_mode: str = "open"
    # How often each server checks whether the registry (sites, API keys) has changed.
    registry_refresh_ms: int = 2_000
    # A connection must send a whole request head within this of opening; after a
    # response, the next within keep_alive_ms; a body within body_timeout_ms of its head.
    header_timeout_ms: int = 10_000
    keep_alive_ms: int = 5_000
    body_timeout_ms: int = 20_000
    # Open connections per ingest process; at the cap the one that has waited longest for
    # its client makes room, or a new one is answered 503 (see ingest/edge.py). One holds
    # 3 to 8.5 KB: 4,096 of them, 35 MB at most.
    max_connections: int = 4_096
    # Server processes on PORT (SO_REUSEPORT), each with its own limits and writer.
    ingest_processes: int = 1
    # Open connections from one client address (IPv6: one /64), as nginx's limit_conn
    # bounds them; 0: no limit. Trusted proxies are not limited.
    max_connections_per_address: int = 256
    # Ingest requests per client address in each whole second; 0: no limit.
    address_rate_limit: int = 1_000
    # Events per site in each whole second; 0: no limit.
    site_rate_limit: int = 0
    # Reporting requests a minute per API key (bursts as large); 0: no limit.
    key_rate_limit: int = 600
    # How long a reporting answer is reused (report/cache.py): answers are exact as of at
    # most this plus the time to compute them; 0: every request computes its own.
    report_cache_ms: int = 100
    # Streams the events are spread over (common/shards.py); 1: STREAM_KEY alone.
    stream_shards: int = 1
    # The shards a processor serves, as "0,2"; empty: every one.
    serve_shards: str = ""
    # REDIS_URL names one node of a Redis Cluster: commands go to the master serving
    # each key, and even one shard's keys carry a hash tag (common/shards.py).
    redis_cluster: bool = False

    @property
    def dead_letter_key(self) -> str:
        return self.stream_key + constants.DEAD_LETTER_SUFFIX

    @property
    def alone_attempts_key(self) -> str:
        return self.stream_key + constants.ALONE_ATTEMPTS_SUFFIX

    @property
    def salt_key_prefix(self) -> str:
        return self.stream_key + constants.SALT_SUFFIX

    @property
    def ledger_key_prefix(self) -> str:
        return self.stream_key + constants.LEDGER_SUFFIX

    def __repr__(self) -> str:
        # Never print a password: URLs are shown with their credentials masked.
        fields = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_url"):
                value = redact_url(value)
            fields.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(fields)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment; ConfigError names the first variable that is
        out of its range. Settings(...) itself checks nothing: tests go outside on purpose."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            name = field.name.upper()
            if name not in env:
                continue
            raw = env[name]
            if field.type == "bool":
                if raw.lower() not in _BOOLEANS:
                    raise ConfigError(f"{name} must be true or false, got {raw!r}")
                values[field.name] = _BOOLEANS[raw.lower()]
            elif field.type == "int":
                try:
                    values[field.name] = int(raw)
                except ValueError:
                    raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
            else:
                if not raw and field.default != "":  # empty only where that is the default
                    raise ConfigError(f"{name} must not be empty")
                values[field.name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        _validate(settings)
        return settings


def _validate(settings: Settings) -> None:
    """Raise ConfigError for the first value the services cannot use (defaults included)."""
    for field, (low, high, unit) in RANGES.items():
        value = getattr(settings, field)
        if not low <= value <= high:
            suffix = f" {unit}" if unit else ""
            raise ConfigError(f"{field.upper()} must be from {low} to {high}{suffix}, got {value}")
    days, age = settings.retention_days, settings.max_age_seconds
    # An event dropped by retention must be too old to be accepted again if resent.
    if days and days * 86_400 <= age:
        raise ConfigError(
            f"RETENTION_DAYS ({days} days) must keep events longer than MAX_AGE_SECONDS "
            f"({age} s) lets them arrive, else a late resend of a dropped event is stored "
            f"again: set RETENTION_DAYS to at least {age // 86_400 + 1}, or to 0"
        )
    if settings.serve_shards:
        numbers = settings.serve_shards.split(",")
        valid = {str(number) for number in range(settings.stream_shards)}
        if not set(numbers) <= valid or len(set(numbers)) < len(numbers):
            raise ConfigError(
                f"SERVE_SHARDS must list shards from 0 to {settings.stream_shards - 1} "
                f"(STREAM_SHARDS), each once, as 0,2; got {settings.serve_shards!r}"
            )
    for field in _NAMES:
        value = getattr(settings, field)
        if not value or not _is_clean(value):
            raise ConfigError(
                f"{field.upper()} must be non-empty, without whitespace or control "
                f"characters, got {value!r}"
            )
    for field, schemes in URL_SCHEMES.items():
        url = getattr(settings, field)
        try:
            scheme = urlsplit(url).scheme
        except ValueError:
            scheme = ""
        if scheme not in schemes:
            raise ConfigError(
                f"{field.upper()} must be a URL with scheme {' or '.join(schemes)}, "
                f"got {redact_url(url)!r}"
            )
    if settings.redis_cluster and urlsplit(settings.redis_url).scheme == "unix":
        raise ConfigError("REDIS_CLUSTER needs a REDIS_URL of a node's address, not a socket")
    if settings.sites_mode not in SITES_MODES:
        raise ConfigError(
            f"SITES_MODE must be one of {', '.join(SITES_MODES)}, got {settings.sites_mode!r}"
        )
    if settings.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(
            f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {settings.log_level!r}"
        )
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {settings.log_format!r}"
        )
    _check_proxies(settings.trusted_proxies)
    _check_origins(settings.cors_origins)


def _is_clean(text: str) -> bool:
    return not any(char.isspace() or not char.isprintable() for char in text)


def _items(text: str) -> list[str]:
    """The items of a comma-separated list, as ingest reads them (blanks left out)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _check_proxies(value: str) -> None:
    for item in _items(value):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"TRUSTED_PROXIES must list IP addresses or networks, got {item!r}"
            ) from None


def _check_origins(value: str) -> None:
    origins = _items(value)
    if origins == ["*"]:
        return
    if not origins:
        raise ConfigError(f"CORS_ORIGINS must be '*' or list origins, got {value!r}")
    for origin in origins:
        if not _is_origin(origin):
            raise ConfigError(
                "CORS_ORIGINS must be '*' or comma-separated origins "
                f"scheme://host[:port] with scheme http or https, got {origin!r}"
            )


def _is_origin(text: str) -> bool:
    """Whether `text` is scheme://host[:port], the form of a browser's Origin header:
    anything more (a path, even a trailing slash) would never match one."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError when the port is not a port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and not parts.netloc.endswith(":")
        and text == f"{parts.scheme}://{parts.netloc}"
        and _is_clean(text)
    )


def settings_or_exit() -> Settings:
    """Settings for a command's main(): a bad variable ends the process with status 2."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(2) from None


# Query parameters whose value is a secret, told by a part of their name (any case):
# password, passwd, pwd, sslpassword, client_secret, access_token, api_key, auth, ...
# Broad on purpose: hiding a harmless value (sslkey, a file's path) costs nothing.
_SECRET_PARAMETER_PARTS = ("pass", "pwd", "secret", "token", "key", "auth", "credential")
_MASK = "***"


def redact_url(url: str) -> str:
    """The URL with every secret replaced by '***', fit for logs and error messages: the
    password of its user information, and the value of each query parameter whose name
    looks like a secret's (libpq, asyncpg and redis-py all read `?password=`). The rest
    is left as written. Never raises, whatever the text: it serves error messages too."""
    url = _redact_userinfo(url)
    base, question, query = url.partition("?")
    if not question:
        return url
    # Up to the end: a '#' in a secret value is not the start of a fragment for us.
    return f"{base}?{_redact_query(query)}"


def _redact_userinfo(url: str) -> str:
    scheme, colon, rest = url.partition(":")
    if not colon or not rest.startswith("//"):
        return url
    start = len(scheme) + 3  # the authority starts after "scheme://"
    ends = [i for i in (url.find(c, start) for c in "/?#") if i >= 0]
    end = min(ends, default=len(url))
    authority = url[start:end]
    at = authority.rfind("@")  # a raw '@' in the password: the last one ends it
    if at >= 0:
        user_end = authority.find(":", 0, at)
        if user_end < 0:
            return url  # a user name alone
        return f"{url[: start + user_end + 1]}{_MASK}{url[start + at :]}"
    # No '@' before the first '/', '?' or '#', unless one of those sits in the password,
    # as in user:pa/ss@host (no client reads that right, but it is still a secret). An
    # '@' in a query's value after a port (host:5432/db?user=a@b) is left to the next step.
    user_end = authority.find(":")
    last_at = url.rfind("@")
    if user_end < 0 or last_at < 0 or authority.startswith("["):  # no user, or IPv6
        return url
    question = url.find("?", end)
    in_query = 0 <= question < last_at and "=" in url[question:last_at]
    if in_query and authority[user_end + 1 :].isdigit():
        return url
    return f"{url[: start + user_end + 1]}{_MASK}{url[last_at:]}"


def _redact_query(query: str) -> str:
    kept: list[str] = []
    hiding = False
    for item in query.split("&"):
        name, equals, _ = item.partition("=")
        if equals:
            hiding = any(part in unquote_plus(name).lower() for part in _SECRET_PARAMETER_PARTS)
            kept.append(f"{name}={_MASK}" if hiding else item)
        elif not hiding:  # else a raw '&' inside the secret value: its rest is left out
            kept.append(item)
    return "&".join(kept)
