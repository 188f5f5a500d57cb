"""Settings read once from the environment into one immutable object per process."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

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
    # An entry delivered more often than this without being stored is dead-lettered.
    max_deliveries: int = 5
    # How often a processor trims acknowledged entries and keeps partitions ahead.
    maintenance_interval_ms: int = 5_000
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

    @property
    def dead_letter_key(self) -> str:
        return self.stream_key + constants.DEAD_LETTER_SUFFIX

    @property
    def salt_key_prefix(self) -> str:
        return self.stream_key + constants.SALT_SUFFIX

    @property
    def ignored_key_prefix(self) -> str:
        return self.stream_key + constants.IGNORED_SUFFIX

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
                    number = int(raw)
                except ValueError:
                    raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
                if number < 0:
                    raise ConfigError(f"{name} must not be negative, got {number}")
                values[field.name] = number
            else:
                if not raw and field.default != "":  # empty only where that is the default
                    raise ConfigError(f"{name} must not be empty")
                values[field.name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        for name in ("batch_size", "writers"):
            if getattr(settings, name) < 1:
                raise ConfigError(f"{name.upper()} must be at least 1")
        return settings


def settings_or_exit() -> Settings:
    """Settings for a command's main(): a bad variable ends the process with status 2."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(2) from None


def redact_url(url: str) -> str:
    """The URL with its password replaced by '***', fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
