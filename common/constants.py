"""Every Redis key, field, group and table name the services share, in one place."""

STREAM_KEY = "events_stream"
CONSUMER_GROUP = "events_processors"
# Keys beside the stream, named after it ("<stream key><suffix>"):
# entries that can never be stored, with the reason, instead of blocking the stream;
DEAD_LETTER_SUFFIX = ":dead"
# daily visitor-hash salts, "<prefix><days since the epoch>", shared by all ingest processes;
SALT_SUFFIX = ":visitor_salt:"
# events ignored at the edge (bots): a hash per UTC day ("<prefix><YYYY-MM-DD>"), a field per site.
IGNORED_SUFFIX = ":ignored:"

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
    "daily_site_users",
    "daily_site_visitors",
)
MIGRATIONS_TABLE = "schema_migrations"

# pg_advisory_lock key that serialises migrations across processes ("anlytics" in ASCII).
MIGRATION_LOCK_KEY = 0x616E6C7974696373

# The times an event may carry, in microseconds since the Unix epoch: years 1 to 9999 (what
# a datetime can hold), well inside PostgreSQL's range.
MIN_MICROS = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_MICROS = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
MICROS_PER_DAY = 86_400_000_000

# Longest accepted values, in characters.
MAX_SITE_ID = 128
MAX_EVENT_TYPE = 64
MAX_PATH = 2048
MAX_USER_ID = 256
