-- The original design's tables and columns, plus what exact counting needs:
-- a unique event_id (the idempotency key) and the distinct users per site and day.
-- Key text columns use the "C" collation: byte order is cheaper to compare and gives
-- the reports one well-defined tie order.

CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid NOT NULL,
    site_id     text COLLATE "C" NOT NULL,
    event_type  text COLLATE "C" NOT NULL,
    path        text COLLATE "C" NOT NULL,
    user_id     text COLLATE "C",
    "timestamp" timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

CREATE TABLE daily_site_stats (
    site_id      text COLLATE "C" NOT NULL,
    date         date NOT NULL,
    total_views  bigint NOT NULL DEFAULT 0,
    unique_users bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, date)
);

CREATE TABLE daily_site_path_counts (
    site_id text COLLATE "C" NOT NULL,
    date    date NOT NULL,
    path    text COLLATE "C" NOT NULL,
    views   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, date, path)
);

-- One row per (site, day, user) ever seen: a user is added to unique_users only when
-- their row is new, so redelivered or repeated events never count a user twice.
CREATE TABLE daily_site_users (
    site_id text COLLATE "C" NOT NULL,
    date    date NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (site_id, date, user_id)
);
