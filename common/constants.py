"""Every Redis key, field, group and table name the services share, in one place."""

STREAM_KEY = "events_stream"
CONSUMER_GROUP = "events_processors"
# Keys beside the stream, named after it ("<stream key><suffix>"):
# entries that can never be stored, with the reason, instead of blocking the stream;
DEAD_LETTER_SUFFIX = ":dead"
# daily visitor-hash salts, "<prefix><days since the epoch>", shared by all ingest processes;
SALT_SUFFIX = ":visitor_salt:"
# the delivery ledger's counts at the edge: a hash per UTC day ("<prefix><YYYY-MM-DD>"), a
# field per count and site: "accepted:<site_id>", "ignored:<reason>:<site_id>" (reasons: bot,
# site_not_registered, origin_not_allowed), "rejected:<field at fault>:<site_id or nothing>",
# "replayed:<site_id>" (dead letters replayed: processor/deadletters.py).
LEDGER_SUFFIX = ":ledger:"
LEDGER_TTL_DAYS = 90  # how long Redis keeps those (PostgreSQL's half stays)
# a hash of the entries being stored one at a time: entry id -> attempts begun (see
# processor/consumer.py), an entry's field deleted once it is handled.
ALONE_ATTEMPTS_SUFFIX = ":alone_attempts"
# each ingest process's metrics, "<prefix><host>:<pid>", published every second (ingest/metrics.py);
METRICS_SUFFIX = ":metrics:"
# a key GET /readyz writes (with a 10 s expiry) to see that Redis takes writes.
READY_PROBE_SUFFIX = ":ready_probe"

# Each stream entry holds one field: the validated event, encoded as JSON by the ingest server.
EVENT_FIELD = b"event"

PAGE_VIEW = "page_view"

STAGING_TABLE = "event_staging"
# Every table the processor writes: what a test or a benchmark empties between runs.
WRITTEN_TABLES = (
    "events",
    "event_ids",
    "daily_site_stats",
    "daily_site_path_counts",
    "daily_dimension_stats",
    "visitor_days",
    "closed_months",
    "monthly_site_path_counts",
    "monthly_dimension_stats",
    "delivery_ledger",
    "ledger_entries",
)
MIGRATIONS_TABLE = "schema_migrations"

# pg_advisory_lock key that serialises migrations across processes ("anlytics" in ASCII).
MIGRATION_LOCK_KEY = 0x616E6C7974696373
# Closing a month (exclusive) against writing to a month that may be closed (shared):
# processor/months.py ("months" in ASCII).
MONTHS_LOCK_KEY = 0x6D6F6E746873

# The times an event may carry, in microseconds since the Unix epoch: years 1 to 9999 (what
# a datetime can hold), well inside PostgreSQL's range.
MIN_MICROS = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_MICROS = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
MICROS_PER_DAY = 86_400_000_000

# Longest accepted values, in bytes of UTF-8 (an ASCII character takes one, others two to
# four), checked by common.text.text_fault at the edge and again by the processor.
MAX_SITE_ID = 128
# Event names: Plausible allows 120 characters (of up to 4 bytes each).
MAX_EVENT_TYPE = 480
MAX_PATH = 2048
MAX_USER_ID = 256
# Memos keyed by User-Agents (the edge's bot check, the processor's parse) are bounded in
# bytes, not only in entries: only agents of at most this many characters are remembered
# (browsers' are 100 to 400), at most this many of them; a longer one is worked out each time.
AGENT_MEMO_MAX_LENGTH = 512
AGENT_MEMO_ENTRIES = 16_384
# The page URL and referrer an event may carry (Plausible's limit for a URL), and its
# custom properties (Plausible's limits: 30 of them, keys 300 bytes, values 2,000).
MAX_URL = 2000
MAX_PROPS = 30
MAX_PROP_KEY = 300
MAX_PROP_VALUE = 2000
MAX_SCREEN_WIDTH = 100_000

# Why these limits: PostgreSQL refuses a B-tree index entry of more than 2,704 bytes (8 KiB
# pages: "index row size ... exceeds btree version 4 maximum 2704"), and an event refused
# there fails its whole batch, which the processor then splits to find it. Every value
# within the limits fits every index, counted uncompressed (PostgreSQL may compress a long
# value but need not: random text does not shrink). An entry is an 8-byte header, then its
# columns, each after at most 3 bytes of padding to a 4-byte boundary: text a 4-byte length
# and its bytes, date 4 bytes, uuid 16 (no padding); then the whole rounded up to 8 (+7):
#   daily_site_path_counts (site_id, date, path)    8 + 3+4+128 + 3+4 + 3+4+2048 + 7 = 2212
#   daily_dimension_stats (site_id, date, dimension, value) 8 + 3+4+128 + 3+4 + 3+4+312 + 3+4+2048 + 7 = 2531
#     (the longest dimension, "event:props:" and a key of 300 bytes, with the longest
#     value, a path: no pair is that long, a property's value being at most 2,000 bytes)
#   visitor_days (site_id, date, visitor)           8 + 3+4+128 + 3+4 + 16 + 7 = 173
#   event_ids (event_id, site_id)                   8 + 16 + 3+4+128 + 7 = 166
#   daily_site_stats (site_id, date)                8 + 3+4+128 + 3+4 + 7 = 157
#   monthly_site_path_counts (site_id, month, path) 8 + 3+4+128 + 3+4 + 3+4+2048 + 7 = 2212
#   monthly_dimension_stats (site_id, month, dimension, value) 8 + 3+4+128 + 3+4 + 3+4+312 + 3+4+2048 + 7 = 2531
#   closed_months (site_id, month)                  8 + 3+4+128 + 3+4 + 7 = 157
#   delivery_ledger (site_id, date)                 8 + 3+4+128 + 3+4 + 7 = 157
#   ledger_entries (entry_id)                       8 + 3+4+41 + 7 = 63
#     (a stream entry id, bytea: two 64-bit numbers and a dash, at most 41 bytes)
# events has no index (sql/003); event_type and user_agent are in none. The largest, 2,531,
# leaves 173 bytes (6%) below the limit. A new index or a longer limit must redo this sum:
# tests/test_storable_limits.py recomputes it from the schema's own indexes.
BTREE_MAX_ENTRY = 2704
