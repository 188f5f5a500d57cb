-- Closed months (processor/months.py): a month's daily rows added up once no event can
-- change them any more, so that a range of many months reads a row per value and month
-- instead of one per value and day (report/planner.py). closed_months lists the (site,
-- month) pairs whose sums are here; a batch that stores an event of a closed month after
-- all (a replayed dead letter, a backlog older than MAX_AGE_SECONDS) reopens it: its row
-- and sums are deleted in the same transaction, and it is closed again later.
CREATE TABLE closed_months (
    site_id   text COLLATE "C" NOT NULL,
    month     date NOT NULL,  -- the first day of the month
    closed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, month)
);

CREATE TABLE monthly_site_path_counts (
    site_id  text COLLATE "C" NOT NULL,
    month    date NOT NULL,
    path     text COLLATE "C" NOT NULL,
    visitors bigint NOT NULL,
    visits   bigint NOT NULL,
    views    bigint NOT NULL,
    PRIMARY KEY (site_id, month, path)
);

CREATE TABLE monthly_dimension_stats (
    site_id     text COLLATE "C" NOT NULL,
    month       date NOT NULL,
    dimension   text COLLATE "C" NOT NULL,
    value       text COLLATE "C" NOT NULL,
    visitors    bigint NOT NULL,
    visits      bigint NOT NULL,
    pageviews   bigint NOT NULL,
    bounces     bigint NOT NULL,
    duration_us bigint NOT NULL,
    events      bigint NOT NULL,
    PRIMARY KEY (site_id, month, dimension, value)
);
