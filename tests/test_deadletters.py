"""The dead-letter command against a real Redis: list, show, replay and purge."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
import redis
import redis.asyncio

from common.config import Settings
from common.constants import EVENT_FIELD
from processor import deadletters
from tests.conftest import free_port

Fields = dict[bytes, bytes]


@pytest.fixture
def client(settings: Settings, redis_client: redis.asyncio.Redis) -> Iterator[redis.Redis]:
    """A sync client; `redis_client` deletes the test's keys afterwards."""
    sync_client = redis.Redis.from_url(settings.redis_url)
    yield sync_client
    sync_client.close()


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The environment `main` reads its settings from."""
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("STREAM_KEY", settings.stream_key)
    return settings


def event(n: int) -> dict[str, object]:
    return {"event_id": f"00000000-0000-7000-8000-{n:012d}", "site_id": "example.com", "n": n}


def original(n: int) -> Fields:
    return {EVENT_FIELD: orjson.dumps(event(n))}


def add_dead_letter(
    client: redis.Redis,
    settings: Settings,
    fields: Fields,
    *,
    reason: str = "site_id: not a non-empty string",
    source_id: str = "1-0",
    deliveries: int | None = None,
) -> str:
    metadata: Fields = {
        b"dead_letter_source_id": source_id.encode(),
        b"dead_letter_reason": reason.encode(),
    }
    if deliveries is not None:
        metadata[b"dead_letter_deliveries"] = str(deliveries).encode()
    entry_id = client.xadd(settings.dead_letter_key, cast(Any, {**fields, **metadata}))
    return cast(bytes, entry_id).decode()


def add_many(client: redis.Redis, settings: Settings, count: int) -> list[str]:
    with client.pipeline(transaction=False) as pipe:
        for n in range(count):
            fields = {**original(n), b"dead_letter_source_id": f"{n}-0".encode()}
            fields[b"dead_letter_reason"] = b"not JSON"
            pipe.xadd(settings.dead_letter_key, cast(Any, fields))
        return [entry_id.decode() for entry_id in pipe.execute()]


def stream(client: redis.Redis, key: str) -> list[tuple[str, Fields]]:
    entries = cast(list[tuple[bytes, Fields]], client.xrange(key))
    return [(entry_id.decode(), fields) for entry_id, fields in entries]


def test_list_shows_the_oldest_entries_and_the_total(
    client: redis.Redis, env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first = add_dead_letter(
        client, env, original(1), reason="not JSON: unexpected character\nline 2", source_id="5-0"
    )
    second = add_dead_letter(client, env, original(2), source_id="6-0", deliveries=3)
    add_dead_letter(client, env, original(3))

    assert deadletters.main(["list", "--count", "2"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{first}  source=5-0  reason=not JSON: unexpected character…",
        f"{second}  source=6-0  deliveries=3  reason=site_id: not a non-empty string",
        f"3 dead letters in {env.dead_letter_key} (the oldest 2 shown)",
    ]


def test_list_of_no_dead_letters(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert deadletters.main(["list"]) == 0
    assert capsys.readouterr().out == f"0 dead letters in {env.dead_letter_key}\n"


def test_show_prints_the_metadata_and_the_event_as_json(
    client: redis.Redis, env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    entry_id = add_dead_letter(
        client, env, {**original(7), b"other": b"caf\xc3\xa9 \xff\x1b[2J"}, source_id="9-1"
    )
    not_json = add_dead_letter(client, env, {EVENT_FIELD: b"{oops \xfe"}, reason="not JSON")

    assert deadletters.main(["show", entry_id, not_json]) == 0

    out = capsys.readouterr().out
    assert out == (
        f"id: {entry_id}\n"
        "  dead_letter_source_id: 9-1\n"
        "  dead_letter_reason: site_id: not a non-empty string\n"
        "  event: {\n"
        '      "event_id": "00000000-0000-7000-8000-000000000007",\n'
        '      "site_id": "example.com",\n'
        '      "n": 7\n'
        "    }\n"
        "  other: café \\xff\\x1b[2J\n"  # undecodable bytes and control characters escaped
        "\n"
        f"id: {not_json}\n"
        "  dead_letter_source_id: 1-0\n"
        "  dead_letter_reason: not JSON\n"
        "  event: {oops \\xfe\n"
    )


def test_show_exits_1_and_names_an_unknown_id(
    client: redis.Redis, env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    entry_id = add_dead_letter(client, env, original(1))

    assert deadletters.main(["show", entry_id, "1-1"]) == 1

    captured = capsys.readouterr()
    assert captured.out.startswith(f"id: {entry_id}\n")
    assert captured.err == f"no dead letter 1-1 in {env.dead_letter_key}\n"


def test_replay_moves_exactly_the_chosen_entries_with_their_original_fields(
    client: redis.Redis, env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first = add_dead_letter(client, env, {**original(1), b"trace": b"\xff"}, deliveries=4)
    kept = add_dead_letter(client, env, original(2))
    third = add_dead_letter(client, env, original(3))

    # Given out of order and twice: replayed once each, in stream order.
    assert deadletters.main(["replay", third, first, third]) == 0

    assert capsys.readouterr().out == f"replayed 2 dead letters to {env.stream_key}\n"
    assert [fields for _, fields in stream(client, env.stream_key)] == [
        {**original(1), b"trace": b"\xff"},
        original(3),
    ]
    assert [entry_id for entry_id, _ in stream(client, env.dead_letter_key)] == [kept]


def test_replay_of_an_unknown_id_replays_the_others_and_exits_1(
    client: redis.Redis, env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    entry_id = add_dead_letter(client, env, original(1))

    assert deadletters.main(["replay", entry_id, "1-1"]) == 1

    captured = capsys.readouterr()
    assert captured.out == f"replayed 1 dead letter to {env.stream_key}\n"
    assert captured.err == "no dead letter 1-1\n"
    assert client.xlen(env.stream_key) == 1
    assert client.xlen(env.dead_letter_key) == 0


def test_replay_leaves_an_entry_that_holds_only_metadata(
    client: redis.Redis, env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    entry_id = add_dead_letter(client, env, {b"dead_letter_extra": b"x"})

    assert deadletters.main(["replay", entry_id]) == 0

    assert capsys.readouterr().out == (
        f"replayed 0 dead letters to {env.stream_key}\n"
        f"left {entry_id}: it holds no field besides the dead_letter_* metadata\n"
    )
    assert client.xlen(env.dead_letter_key) == 1
    assert client.xlen(env.stream_key) == 0


def test_replay_all_moves_everything_in_order_over_several_chunks(
    client: redis.Redis, env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deadletters.CHUNK_SIZE == 500
    add_many(client, env, 1_200)

    assert deadletters.main(["replay", "--all"]) == 0

    assert capsys.readouterr().out == f"replayed 1200 dead letters to {env.stream_key}\n"
    assert [fields for _, fields in stream(client, env.stream_key)] == [
        original(n) for n in range(1_200)
    ]
    assert client.xlen(env.dead_letter_key) == 0


def test_replay_all_stops_at_the_entries_present_when_it_started(
    client: redis.Redis, settings: Settings
) -> None:
    # Replaying into the dead-letter stream itself: every replayed entry "comes back".
    ids = add_many(client, settings, 5)
    key = settings.dead_letter_key

    outcome = deadletters.replay_all(client, key, key, chunk_size=2)

    assert outcome == deadletters.Outcome(done=5)
    after = stream(client, key)
    assert [fields for _, fields in after] == [original(n) for n in range(5)]
    assert not {entry_id for entry_id, _ in after} & set(ids)


def test_a_concurrent_replay_of_the_same_entry_does_not_duplicate_it(
    client: redis.Redis, settings: Settings
) -> None:
    entry_id = add_dead_letter(client, settings, original(1))
    dead_key, stream_key = settings.dead_letter_key, settings.stream_key
    reads = 0

    def read_then_race(pipe: redis.client.Pipeline) -> list[deadletters.RawEntry]:
        nonlocal reads
        reads += 1
        entries = deadletters._read_ids(pipe, dead_key=dead_key, ids=[entry_id])
        if reads == 1:  # another operator replays the entry between our read and our EXEC
            with redis.Redis.from_url(settings.redis_url) as other:
                assert deadletters.replay(other, dead_key, stream_key, [entry_id]).done == 1
        return entries

    outcome = deadletters.Outcome()
    deadletters._move(client, dead_key, stream_key, read_then_race, outcome)

    assert reads == 2  # the first transaction was refused, the second read found nothing
    assert outcome == deadletters.Outcome(done=0)
    assert [fields for _, fields in stream(client, stream_key)] == [original(1)]
    assert client.xlen(dead_key) == 0


def test_purge_removes_the_chosen_entries(
    client: redis.Redis, env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first = add_dead_letter(client, env, original(1))
    kept = add_dead_letter(client, env, original(2))

    assert deadletters.main(["purge", first, "1-1"]) == 1

    captured = capsys.readouterr()
    assert captured.out == f"purged 1 dead letter from {env.dead_letter_key}\n"
    assert captured.err == "no dead letter 1-1\n"
    assert [entry_id for entry_id, _ in stream(client, env.dead_letter_key)] == [kept]
    assert client.xlen(env.stream_key) == 0


def test_purge_all_removes_everything(
    client: redis.Redis, env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    add_many(client, env, 7)

    assert deadletters.purge_all(client, env.dead_letter_key, chunk_size=3).done == 7
    add_many(client, env, 3)
    assert deadletters.main(["purge", "--all"]) == 0

    assert capsys.readouterr().out == f"purged 3 dead letters from {env.dead_letter_key}\n"
    assert client.xlen(env.dead_letter_key) == 0
    assert client.xlen(env.stream_key) == 0


@pytest.mark.parametrize(
    "argv", [["replay"], ["purge"], ["replay", "--all", "1-0"], ["show", "abc"], ["show", "5"]]
)
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        deadletters.main(argv)
    assert exit_info.value.code == 2
    assert "usage: python -m processor.deadletters" in capsys.readouterr().err


def test_an_unreachable_redis_is_a_plain_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:secret@127.0.0.1:{free_port()}/0")

    assert deadletters.main(["list"]) == 1

    err = capsys.readouterr().err
    assert err.startswith("cannot reach Redis at redis://:***@127.0.0.1:")
    assert "secret" not in err
