"""Unit tests of settings from the environment."""

from __future__ import annotations

import pytest

from common.config import ConfigError, Settings, redact_url


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
    ],
)
def test_bad_values_are_refused_by_name(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        Settings.from_env(env)


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
