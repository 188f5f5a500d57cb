"""Unit tests of settings from the environment."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time

import pytest

from common.config import RANGES, ConfigError, Settings, redact_url
from tests.conftest import ROOT, free_port

# Nothing listens on port 1: a process that reached for these would fail or retry.
UNREACHABLE = {
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "DATABASE_URL": "postgresql://app@127.0.0.1:1/analytics",
}


def test_defaults_match_the_original_design() -> None:
    settings = Settings.from_env({})
    assert settings.port == 3000
    assert settings.stream_key == "events_stream"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


def test_variables_are_read_and_typed() -> None:
    settings = Settings.from_env({"PORT": "8080", "STREAM_KEY": "s", "BATCH_SIZE": "200"})
    assert (settings.port, settings.stream_key, settings.batch_size) == (8080, "s", 200)


@pytest.mark.parametrize(
    "env",
    [
        {"PORT": "eighty"},
        {"BATCH_SIZE": "0"},
        {"WRITERS": "0"},
        {"BLOCK_MS": "-1"},
        {"STREAM_KEY": ""},
        {"STORE_CLIENT_INFO": "maybe"},
    ],
)
def test_bad_values_are_refused_by_name(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        Settings.from_env(env)


def test_every_integer_setting_has_a_range() -> None:
    integers = {field.name for field in dataclasses.fields(Settings) if field.type == "int"}
    assert integers == set(RANGES)


def test_the_defaults_are_inside_their_ranges() -> None:
    defaults = Settings()
    for field, (low, high, _unit) in RANGES.items():
        assert low <= getattr(defaults, field) <= high, field
    Settings.from_env({})  # checks the other defaults too: names, URLs, origins, level


def _bounds(offset: int) -> list[tuple[str, int]]:
    """(field, value) at each end of each range, moved outwards by `offset`."""
    return [
        (field, value)
        for field, (low, high, _unit) in RANGES.items()
        for value in (low - offset, high + offset)
    ]


@pytest.mark.parametrize(("field", "value"), _bounds(0), ids=lambda p: str(p))
def test_each_bound_is_accepted(field: str, value: int) -> None:
    assert getattr(Settings.from_env({field.upper(): str(value)}), field) == value


@pytest.mark.parametrize(("field", "value"), _bounds(1), ids=lambda p: str(p))
def test_one_past_each_bound_is_refused_naming_variable_range_and_value(
    field: str, value: int
) -> None:
    low, high, unit = RANGES[field]
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({field.upper(): str(value)})
    message = str(refused.value)
    assert message.startswith(field.upper() + " ")
    assert f"from {low} to {high}{' ' + unit if unit else ''}," in message
    assert message.endswith(f"got {value}")


@pytest.mark.parametrize(
    ("retention_days", "max_age_seconds", "accepted"),
    [
        (7, 7 * 86_400, False),  # the default age: a week of retention is not enough
        (8, 7 * 86_400, True),
        (1, 86_399, True),
        (1, 86_400, False),
        (0, 315_360_000, True),  # 0 keeps everything, whatever the age
    ],
)
def test_retention_must_outlast_the_accepted_age(
    retention_days: int, max_age_seconds: int, accepted: bool
) -> None:
    env = {"RETENTION_DAYS": str(retention_days), "MAX_AGE_SECONDS": str(max_age_seconds)}
    if accepted:
        assert Settings.from_env(env).retention_days == retention_days
        return
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert "RETENTION_DAYS" in str(refused.value) and "MAX_AGE_SECONDS" in str(refused.value)


def test_trusted_proxies_accept_addresses_and_networks() -> None:
    value = "10.0.0.0/8, 192.168.1.7,::1 , 2001:db8::/32, 172.16.5.4/12,"
    assert Settings.from_env({"TRUSTED_PROXIES": value}).trusted_proxies == value


def test_a_bad_trusted_proxy_is_named() -> None:
    with pytest.raises(ConfigError, match=r"TRUSTED_PROXIES .*'10\.0\.0\.300'"):
        Settings.from_env({"TRUSTED_PROXIES": "10.0.0.1, 10.0.0.300, 10.0.0.2"})


@pytest.mark.parametrize(
    "origins",
    [
        "*",
        "https://shop.example",
        "https://shop.example:8443, http://localhost:3000",
        "http://[::1]:8080",
    ],
)
def test_cors_origins_accepted(origins: str) -> None:
    assert Settings.from_env({"CORS_ORIGINS": origins}).cors_origins == origins


@pytest.mark.parametrize(
    "origins",
    [
        "https://shop.example/",  # a browser's Origin never ends with a slash
        "https://shop.example/path",
        "shop.example",
        "ftp://shop.example",
        "HTTPS://shop.example",
        "https://shop.example:99999",
        "https://user@shop.example",
        "*, https://shop.example",
        " , ",
    ],
)
def test_cors_origins_refused(origins: str) -> None:
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        Settings.from_env({"CORS_ORIGINS": origins})


@pytest.mark.parametrize(
    ("name", "url", "accepted"),
    [
        ("REDIS_URL", "redis://r:6379/0", True),
        ("REDIS_URL", "rediss://r:6380/0", True),
        ("REDIS_URL", "unix:///run/redis.sock?db=0", True),
        ("REDIS_URL", "http://r:6379/0", False),
        ("REDIS_URL", "127.0.0.1:6379", False),
        ("DATABASE_URL", "postgresql://app@db/analytics", True),
        ("DATABASE_URL", "postgres://app@db/analytics", True),
        ("DATABASE_URL", "mysql://app@db/analytics", False),
    ],
)
def test_url_schemes(name: str, url: str, accepted: bool) -> None:
    if accepted:
        assert getattr(Settings.from_env({name: url}), name.lower()) == url
        return
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: url})


def test_a_refused_url_is_shown_without_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"DATABASE_URL": "mysql://app:s3cret@db/analytics"})
    assert "s3cret" not in str(refused.value) and "app:***@db" in str(refused.value)


@pytest.mark.parametrize("level", ["DEBUG", "info", "Warning", "error", "CRITICAL"])
def test_log_levels_in_any_case(level: str) -> None:
    assert Settings.from_env({"LOG_LEVEL": level}).log_level == level


def test_an_unknown_log_level_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"LOG_LEVEL .*'verbose'"):
        Settings.from_env({"LOG_LEVEL": "verbose"})


@pytest.mark.parametrize("name", ["STREAM_KEY", "CONSUMER_GROUP", "CONSUMER_NAME", "HOST"])
@pytest.mark.parametrize("value", ["a b", "a\tb", "ab\n", "a\x00b", "a\x7fb"])
def test_names_refuse_whitespace_and_control_characters(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_the_configuration_page_states_each_range() -> None:
    section = (ROOT / "docs" / "configuration.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in section.splitlines() if "|" in line}
    for field, (low, high, unit) in RANGES.items():
        assert f"{low} to {high}{' ' + unit if unit else ''}" in rows[field.upper()], field


def _environment(**variables: str) -> dict[str, str]:
    """This run's environment without any variable of ours, plus `variables`."""
    ours = {field.name.upper() for field in dataclasses.fields(Settings)}
    env = {name: value for name, value in os.environ.items() if name not in ours}
    return {**env, **variables}


def test_the_processor_started_with_block_ms_0_exits_with_status_2_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "processor"],
        cwd=ROOT,
        env=_environment(BLOCK_MS="0", **UNREACHABLE),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "BLOCK_MS" in line


def test_passwords_never_appear_in_the_repr() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app:s3cret@db:5432/analytics",
            "REDIS_URL": "redis://:hunter2@r:6379/0",
        }
    )
    text = repr(settings)
    assert "s3cret" not in text and "hunter2" not in text
    assert "postgresql://app:***@db:5432/analytics" in text


def test_redact_leaves_urls_without_password_alone() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # Query parameters that libpq, asyncpg or redis-py read as secrets, in any case.
        (
            "postgresql://app@db:5432/analytics?password=s3cr3t",
            "postgresql://app@db:5432/analytics?password=***",
        ),
        (
            "postgresql://db/a?sslmode=require&PassWord=s3cr3t&sslpassword=s3cr3t&application_name=x",
            "postgresql://db/a?sslmode=require&PassWord=***&sslpassword=***&application_name=x",
        ),
        ("redis://r:6379/0?password=s3cr3t", "redis://r:6379/0?password=***"),
        ("unix:///run/redis.sock?db=1&password=s3cr3t", "unix:///run/redis.sock?db=1&password=***"),
        (
            "redis://r?passwd=s3cr3t&pwd=s3cr3t&client_secret=s3cr3t&access_token=s3cr3t"
            "&api_key=s3cr3t&auth=s3cr3t&credentials=s3cr3t&pass%77ord=s3cr3t",
            "redis://r?passwd=***&pwd=***&client_secret=***&access_token=***"
            "&api_key=***&auth=***&credentials=***&pass%77ord=***",
        ),
        # Both places at once; a raw '&' or '#' inside a secret value.
        (
            "postgresql://app:s3cr3t@db/a?password=s3cr3t",
            "postgresql://app:***@db/a?password=***",
        ),
        ("postgresql://db/a?password=s3&cr3t&x=1", "postgresql://db/a?password=***&x=1"),
        ("postgresql://db/a?password=s3#cr3t", "postgresql://db/a?password=***"),
        # Passwords holding characters that should have been percent-encoded.
        ("redis://u:s3@cr3t@r:6379/0", "redis://u:***@r:6379/0"),
        ("postgresql://app:s3/cr3t@db/a", "postgresql://app:***@db/a"),
        ("postgresql://app:12?s3cr3t@db/a", "postgresql://app:***@db/a"),
        ("postgresql://app:s3#cr3t@db/a", "postgresql://app:***@db/a"),
        # A URL that urlsplit refuses (an unclosed bracket) is redacted all the same.
        ("postgresql://app:s3cr3t@[::1/a", "postgresql://app:***@[::1/a"),
        # Nothing secret: left as written.
        ("postgresql://app@db:5432/a?user=me@corp", "postgresql://app@db:5432/a?user=me@corp"),
        ("postgresql://db:5432/a?user=me@corp", "postgresql://db:5432/a?user=me@corp"),
        ("postgresql://[::1]:5432/a?user=me@corp", "postgresql://[::1]:5432/a?user=me@corp"),
        ("postgresql://db/a?sslmode=require", "postgresql://db/a?sslmode=require"),
        ("not a url", "not a url"),
    ],
)
def test_redact_hides_every_secret_wherever_it_sits_in_the_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3" not in shown and "cr3t" not in shown


SECRET_URLS = {
    "DATABASE_URL": "postgresql://app@127.0.0.1:1/analytics?password=s3cret&sslpassword=k3y",
    "REDIS_URL": "redis://:hunter2@127.0.0.1:1/0?password=hunter3",
}
SECRETS = ("s3cret", "k3y", "hunter2", "hunter3")


def test_passwords_in_query_parameters_never_appear_in_the_repr() -> None:
    text = repr(Settings.from_env(SECRET_URLS))
    assert not [secret for secret in SECRETS if secret in text], text
    assert "analytics?password=***&sslpassword=***" in text
    assert "redis://:***@127.0.0.1:1/0?password=***" in text


@pytest.mark.parametrize("command", ["common.migrate", "ingest", "processor"])
def test_failed_starts_never_print_a_password_from_the_urls(command: str) -> None:
    """Each logs its settings or the URL, then fails to reach the database, whether it
    gives up or retries; DEBUG logs as much as can be."""
    output = _start_up_output(
        command, _environment(LOG_LEVEL="DEBUG", PORT=str(free_port()), **SECRET_URLS)
    )
    assert "password=***" in output  # the URL was logged, redacted
    assert not [secret for secret in SECRETS if secret in output], output


def _start_up_output(module: str, env: dict[str, str]) -> str:
    """What `python -m module` logs until it exits, or until a line past its start shows
    a URL (a failure or a retry that names the database), or 20 s have passed."""
    with tempfile.TemporaryFile() as log:  # not a pipe: a full pipe would stall it
        process = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 20
            while process.poll() is None and time.monotonic() < deadline:
                log.seek(0)
                lines = log.read().decode(errors="replace").splitlines()
                if any("***" in line and "starting with" not in line for line in lines):
                    break
                time.sleep(0.05)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.seek(0)
        return log.read().decode(errors="replace")


def test_a_url_that_urlsplit_refuses_is_a_config_error_without_its_password() -> None:
    # Was a bare ValueError from redact_url itself: a traceback instead of exit status 2.
    with pytest.raises(ConfigError, match="DATABASE_URL") as refused:
        Settings.from_env({"DATABASE_URL": "postgresql://app:s3cret@[::1/analytics"})
    assert "s3cret" not in str(refused.value) and "app:***@[::1" in str(refused.value)
