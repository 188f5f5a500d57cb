"""List, show, replay or purge dead letters: `python -m processor.deadletters <command>`.

A dead letter is a stream entry the processor could never store, moved to
`<STREAM_KEY>:dead` with its original fields plus metadata fields named `dead_letter_*`
(the source entry id, the reason, the number of deliveries). Replaying appends the
original fields, without the metadata, to the main stream and deletes the dead letter,
both in one MULTI/EXEC transaction per chunk: a crash replays a chunk entirely or not at
all, and WATCH keeps two replays (or a replay and a purge) from moving an entry twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.config import Settings, redact_url, settings_or_exit
from common.constants import EVENT_FIELD, LEDGER_SUFFIX, LEDGER_TTL_DAYS, MICROS_PER_DAY
from common.days import utc_date
from common.redis_clients import SyncRedis, sync_client
from common.shards import shards_of
from processor.tally import where_from

METADATA_PREFIX = b"dead_letter_"
SOURCE_ID_FIELD = b"dead_letter_source_id"
REASON_FIELD = b"dead_letter_reason"
DELIVERIES_FIELD = b"dead_letter_deliveries"

CHUNK_SIZE = 500  # entries per transaction (and per read) when working through the stream
MAX_ATTEMPTS = 20  # transactions retried when the dead-letter stream changed under WATCH
REASON_WIDTH = 120  # characters of the reason shown by `list`

EPILOG = """\
examples:
  python -m processor.deadletters list --count 50
  python -m processor.deadletters show 1717171717171-0
  python -m processor.deadletters replay 1717171717171-0 1717171717180-3
  python -m processor.deadletters replay --all
  python -m processor.deadletters purge --all

Replaying appends an entry's original fields (not its dead_letter_* fields) to
<STREAM_KEY> and deletes it from the dead letters in one transaction; --all covers
the entries present at the start. Exit status: 0, or 1 when an ID is not found or
Redis fails, 2 for bad arguments or configuration."""

_STREAM_ID = re.compile(r"\d+-\d+")

# An entry as XRANGE returns it: (id, {field: value}).
RawEntry = tuple[bytes, dict[bytes, bytes]]


class ConcurrentChangeError(RuntimeError):
    """The dead-letter stream kept changing during a transaction, MAX_ATTEMPTS times over."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    metadata: dict[bytes, bytes]  # the `dead_letter_*` fields, added by the processor
    fields: dict[bytes, bytes]  # the original entry's fields

    @classmethod
    def from_entry(cls, entry: RawEntry) -> DeadLetter:
        entry_id, all_fields = entry
        metadata, fields = split_fields(all_fields)
        return cls(entry_id.decode(), metadata, fields)

    @property
    def source_id(self) -> str | None:
        return _optional_text(self.metadata.get(SOURCE_ID_FIELD))

    @property
    def reason(self) -> str | None:
        return _optional_text(self.metadata.get(REASON_FIELD))

    @property
    def deliveries(self) -> str | None:
        return _optional_text(self.metadata.get(DELIVERIES_FIELD))


@dataclasses.dataclass(slots=True)
class Outcome:
    """What a replay or purge did."""

    done: int = 0  # entries replayed or purged
    missing: list[str] = dataclasses.field(default_factory=list)  # ids not in the stream
    # Dead letters without any original field: nothing to replay, so they were left in place.
    skipped: list[str] = dataclasses.field(default_factory=list)


def split_fields(fields: dict[bytes, bytes]) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """(metadata, original fields): any field named `dead_letter_*` is metadata."""
    metadata = {k: v for k, v in fields.items() if k.startswith(METADATA_PREFIX)}
    original = {k: v for k, v in fields.items() if not k.startswith(METADATA_PREFIX)}
    return metadata, original


def is_stream_id(value: str) -> bool:
    """A complete stream entry id, `<milliseconds>-<sequence>`."""
    return _STREAM_ID.fullmatch(value) is not None


# --- reading -------------------------------------------------------------------------------


def list_dead_letters(client: SyncRedis, dead_key: str, count: int) -> list[DeadLetter]:
    """The `count` oldest dead letters, oldest first."""
    return [DeadLetter.from_entry(e) for e in _entries(client.xrange(dead_key, count=count))]


def count_dead_letters(client: SyncRedis, dead_key: str) -> int:
    return int(cast(Any, client.xlen(dead_key)))


def get_dead_letters(
    client: SyncRedis, dead_key: str, ids: Sequence[str]
) -> dict[str, DeadLetter | None]:
    """Each id's dead letter, or None where there is none; in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for entry_id in ids:
            pipe.xrange(dead_key, entry_id, entry_id)
        responses = pipe.execute()
    return {
        entry_id: DeadLetter.from_entry(found[0]) if (found := _entries(response)) else None
        for entry_id, response in zip(ids, responses, strict=True)
    }


# --- replaying -----------------------------------------------------------------------------


def replay(client: SyncRedis, dead_key: str, stream_key: str, ids: Iterable[str]) -> Outcome:
    """Move the dead letters `ids` (each once, in stream order) back to the main stream."""
    outcome = Outcome()
    for chunk in _chunks(_unique_in_stream_order(ids), CHUNK_SIZE):
        read = functools.partial(_read_ids, dead_key=dead_key, ids=chunk)
        entries = _move(client, dead_key, stream_key, read, outcome)
        found = {entry_id.decode() for entry_id, _ in entries}
        outcome.missing.extend(entry_id for entry_id in chunk if entry_id not in found)
    return outcome


def replay_all(
    client: SyncRedis, dead_key: str, stream_key: str, chunk_size: int = CHUNK_SIZE
) -> Outcome:
    """Move every dead letter present now back to the main stream, oldest first, by chunks.

    Entries dead-lettered after the start (replayed ones that fail again included) stay.
    """
    outcome = Outcome()
    end = _newest_id(client, dead_key)
    start = "-"
    while end is not None:
        read = functools.partial(
            _read_range, dead_key=dead_key, start=start, end=end, count=chunk_size
        )
        entries = _move(client, dead_key, stream_key, read, outcome)
        if len(entries) < chunk_size:
            break
        start = "(" + entries[-1][0].decode()  # past the entries left in place
    return outcome


def _move(
    client: SyncRedis,
    dead_key: str,
    stream_key: str,
    read: Callable[[Pipeline], list[RawEntry]],
    outcome: Outcome,
) -> list[RawEntry]:
    """Read entries under WATCH, then XADD + XDEL them in one MULTI/EXEC; returns those read.
    The delivery ledger counts each as replayed in the same transaction (it was counted
    dead-lettered, and will be stored or dead-lettered again: processor/ledger.py).

    Entries without any original field are left in place (and listed in `outcome.skipped`).
    """
    for _ in range(MAX_ATTEMPTS):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(dead_key)
                entries = read(pipe)
                pipe.multi()
                for entry_id, fields in entries:
                    original = split_fields(fields)[1]
                    if original:
                        pipe.xadd(stream_key, cast(Any, original))
                        pipe.xdel(dead_key, entry_id)
                        site, micros = where_from(entry_id, original)
                        day = utc_date(micros // MICROS_PER_DAY)
                        ledger_key = f"{stream_key}{LEDGER_SUFFIX}{day.isoformat()}"
                        pipe.hincrby(ledger_key, f"replayed:{site}", 1)
                        pipe.expire(ledger_key, LEDGER_TTL_DAYS * 86_400)
                pipe.execute()
            except WatchError:
                continue  # the dead-letter stream changed since the read: read again
        for entry_id, fields in entries:
            if split_fields(fields)[1]:
                outcome.done += 1
            else:
                outcome.skipped.append(entry_id.decode())
        return entries
    raise ConcurrentChangeError(
        f"{dead_key} changed during each of {MAX_ATTEMPTS} attempts; nothing of this chunk moved"
    )


# --- purging -------------------------------------------------------------------------------


def purge(client: SyncRedis, dead_key: str, ids: Iterable[str]) -> Outcome:
    """Delete the dead letters `ids`."""
    unique = list(dict.fromkeys(ids))
    with client.pipeline(transaction=False) as pipe:
        for entry_id in unique:
            pipe.xdel(dead_key, entry_id)
        deleted = pipe.execute()
    outcome = Outcome(done=sum(int(n) for n in deleted))
    outcome.missing = [entry_id for entry_id, n in zip(unique, deleted, strict=True) if not n]
    return outcome


def purge_all(client: SyncRedis, dead_key: str, chunk_size: int = CHUNK_SIZE) -> Outcome:
    """Delete every dead letter present now, by chunks; later ones stay."""
    outcome = Outcome()
    end = _newest_id(client, dead_key)
    start = "-"
    while end is not None:
        ids = [e[0] for e in _entries(client.xrange(dead_key, start, end, count=chunk_size))]
        if ids:
            outcome.done += int(cast(Any, client.xdel(dead_key, *ids)))
        if len(ids) < chunk_size:
            break
        start = "(" + ids[-1].decode()
    return outcome


# --- helpers -------------------------------------------------------------------------------


def _newest_id(client: SyncRedis, dead_key: str) -> str | None:
    newest = _entries(client.xrevrange(dead_key, count=1))
    return newest[0][0].decode() if newest else None


def _read_range(
    pipe: Pipeline, *, dead_key: str, start: str, end: str, count: int
) -> list[RawEntry]:
    return _entries(pipe.xrange(dead_key, start, end, count=count))


def _read_ids(pipe: Pipeline, *, dead_key: str, ids: list[str]) -> list[RawEntry]:
    # Under WATCH the pipeline runs each command at once: one round trip per id.
    entries: list[RawEntry] = []
    for entry_id in ids:
        entries.extend(_entries(pipe.xrange(dead_key, entry_id, entry_id)))
    return entries


def _entries(response: object) -> list[RawEntry]:
    return cast(list[RawEntry], response)


def _unique_in_stream_order(ids: Iterable[str]) -> list[str]:
    return sorted(set(ids), key=lambda i: tuple(int(part) for part in i.split("-")))


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _optional_text(value: bytes | None) -> str | None:
    return None if value is None else text(value)


def text(value: bytes) -> str:
    """Bytes for a terminal: undecodable bytes and control characters escaped."""
    return escape_controls(value.decode("utf-8", errors="backslashreplace"))


def escape_controls(value: str) -> str:
    """Control characters but newline and tab escaped, so that no data drives the terminal."""
    return "".join(
        c if c in "\n\t" or unicodedata.category(c) != "Cc" else f"\\x{ord(c):02x}" for c in value
    )


# --- command line --------------------------------------------------------------------------


def format_list_line(letter: DeadLetter) -> str:
    parts = [letter.id, f"source={letter.source_id or '?'}"]
    if letter.deliveries is not None:
        parts.append(f"deliveries={letter.deliveries}")
    parts.append(f"reason={one_line(letter.reason or '', REASON_WIDTH)}")
    return "  ".join(parts)


def one_line(value: str, width: int) -> str:
    lines = value.splitlines() or [""]
    first = lines[0].replace("\t", " ")
    if len(lines) > 1 or len(first) > width:
        return first[: width - 1] + "…"
    return first


def format_dead_letter(letter: DeadLetter) -> str:
    lines = [f"id: {letter.id}"]
    for name, value in letter.metadata.items():
        lines.append(_indented(f"{text(name)}: ", text(value)))
    for name, value in letter.fields.items():
        if name == EVENT_FIELD:
            lines.append(_indented(f"{text(name)}: ", format_event(value)))
        else:
            lines.append(_indented(f"{text(name)}: ", text(value)))
    return "\n".join(lines)


def format_event(value: bytes) -> str:
    """The event as indented JSON when it parses as JSON, else as escaped text."""
    try:
        event = json.loads(value)
    except ValueError:  # not JSON, or not UTF-8
        return text(value)
    return escape_controls(json.dumps(event, indent=2, ensure_ascii=False))


def _indented(label: str, value: str) -> str:
    """`  label value`, continuation lines indented under the label."""
    first, *rest = value.split("\n")
    return "\n".join([f"  {label}{first}", *(f"    {line}" for line in rest)])


def _stream_id(value: str) -> str:
    if not is_stream_id(value):
        raise argparse.ArgumentTypeError(f"not a stream entry id (ms-seq): {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m processor.deadletters",
        description="List, show, replay or purge the dead letters in <STREAM_KEY>:dead\n"
        "(REDIS_URL and STREAM_KEY from the environment).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--shard",
        type=int,
        metavar="N",
        help="with STREAM_SHARDS: that shard's dead letters only (needed with IDs);"
        " list and --all go through every shard otherwise",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="one line per dead letter, oldest first")
    listing.add_argument(
        "--count", type=_positive, default=20, help="how many to list (default 20)"
    )
    show = commands.add_parser("show", help="dead letters in full")
    show.add_argument("ids", nargs="+", type=_stream_id, metavar="ID", help="dead-letter entry id")
    for name, help_text in (
        ("replay", "append to the main stream and delete from the dead letters"),
        ("purge", "delete dead letters for good"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "ids", nargs="*", type=_stream_id, metavar="ID", help="dead-letter entry id"
        )
        command.add_argument(
            "--all", action="store_true", help="every dead letter present when the command starts"
        )
    return parser


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def run_command(args: argparse.Namespace, client: SyncRedis, settings: Settings) -> int:
    """The command on the dead letters of the shard named, or of each shard in turn
    (common/shards.py: each shard has its own; one shard is the stream itself)."""
    shards = [shard.settings for shard in shards_of(settings)]
    shard = getattr(args, "shard", None)
    if shard is not None:
        if not 0 <= shard < len(shards):
            sys.stderr.write(f"--shard: not one of 0 to {len(shards) - 1}\n")
            return 2
        shards = [shards[shard]]
    elif len(shards) > 1 and getattr(args, "ids", None):
        sys.stderr.write("the stream has several shards: name the dead letters' with --shard\n")
        return 2
    return max(_run_on_stream(args, client, one) for one in shards)


def _run_on_stream(args: argparse.Namespace, client: SyncRedis, settings: Settings) -> int:
    dead_key = settings.dead_letter_key
    if args.command == "list":
        return _list(client, dead_key, args.count)
    if args.command == "show":
        return _show(client, dead_key, args.ids)
    if args.command == "replay":
        if args.all:
            outcome = replay_all(client, dead_key, settings.stream_key)
        else:
            outcome = replay(client, dead_key, settings.stream_key, args.ids)
        return _report("replayed", outcome, settings.stream_key)
    outcome = purge_all(client, dead_key) if args.all else purge(client, dead_key, args.ids)
    return _report("purged", outcome, dead_key)


def _list(client: SyncRedis, dead_key: str, count: int) -> int:
    letters = list_dead_letters(client, dead_key, count)
    total = count_dead_letters(client, dead_key)
    for letter in letters:
        print(format_list_line(letter))
    shown = f" (the oldest {len(letters)} shown)" if len(letters) < total else ""
    print(f"{total} dead letter{'' if total == 1 else 's'} in {dead_key}{shown}")
    return 0


def _show(client: SyncRedis, dead_key: str, ids: list[str]) -> int:
    letters = get_dead_letters(client, dead_key, list(dict.fromkeys(ids)))
    missing = [entry_id for entry_id, letter in letters.items() if letter is None]
    found = [letter for letter in letters.values() if letter is not None]
    if found:
        print("\n\n".join(format_dead_letter(letter) for letter in found))
    for entry_id in missing:
        sys.stderr.write(f"no dead letter {entry_id} in {dead_key}\n")
    return 1 if missing else 0


def _report(verb: str, outcome: Outcome, key: str) -> int:
    where = f" to {key}" if verb == "replayed" else f" from {key}"
    print(f"{verb} {outcome.done} dead letter{'' if outcome.done == 1 else 's'}{where}")
    for entry_id in outcome.skipped:
        print(f"left {entry_id}: it holds no field besides the dead_letter_* metadata")
    for entry_id in outcome.missing:
        sys.stderr.write(f"no dead letter {entry_id}\n")
    return 1 if outcome.missing else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("replay", "purge") and args.all == bool(args.ids):
        parser.error(f"{args.command}: give either IDs or --all")
    settings = settings_or_exit()
    client = sync_client(settings, socket_connect_timeout=5, socket_timeout=30)
    try:
        return run_command(args, client, settings)
    except (RedisConnectionError, RedisTimeoutError, RedisClusterException) as exc:
        sys.stderr.write(f"cannot reach Redis at {redact_url(settings.redis_url)}: {exc}\n")
    except ConcurrentChangeError as exc:
        sys.stderr.write(f"{exc}; try again\n")
    except RedisError as exc:
        sys.stderr.write(f"Redis error: {exc}\n")
    finally:
        client.close()
    return 1


if __name__ == "__main__":
    sys.exit(main())
