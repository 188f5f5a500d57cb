-- Visits and dimensions (docs/metrics.md). Every figure is kept per site and per day of
-- the site's time zone (sites.time_zone; UTC for a site not in the registry).
--
-- visitor_days holds, per site, day and visitor, what the processor needs to count that
-- visitor's next events exactly: the day's visits so far (processor/visits.py), encoded as
-- JSON (read it with convert_from(visits, 'UTF8')::jsonb). A row exists from the
-- visitor's first event of the day, so the rows of a day are its distinct visitors. It
-- replaces daily_site_users and daily_site_visitors. The visitor is the event's user_id
-- (as md5(user_id)::uuid: fixed width, and erasable knowing the user_id) or else its
-- daily visitor id. Rows are updated in place by every batch that touches the visitor:
-- fillfactor leaves room for those updates to stay on their page (HOT).
CREATE TABLE visitor_days (
    site_id text COLLATE "C" NOT NULL,
    date    date NOT NULL,
    visitor uuid NOT NULL,
    -- NULL: counted as a visitor before visits were kept (rows moved from the old tables).
    visits     bytea,
    -- When the last visit ends unless another event comes: its last event + 30 minutes,
    -- in microseconds since 1970.
    open_until   bigint NOT NULL DEFAULT 0,
    -- The visits that ended by this time are in the dimension rollups (folding.py).
    folded_until bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, date, visitor)
) WITH (fillfactor = 60);
-- Neither time is in an index, so that their updates stay on the row's page (HOT).
CREATE INDEX visitor_days_date ON visitor_days (date);

CREATE FUNCTION visitor_key(user_id text, visitor_id uuid) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN user_id IS NOT NULL THEN md5(user_id)::uuid ELSE visitor_id END;

INSERT INTO visitor_days (site_id, date, visitor)
SELECT site_id, date, visitor_key(user_id, NULL) FROM daily_site_users
UNION ALL
SELECT site_id, date, visitor_id FROM daily_site_visitors
ON CONFLICT DO NOTHING;
DROP TABLE daily_site_users, daily_site_visitors;

-- Daily figures per site (unique_users are the visitors), and per page.
ALTER TABLE daily_site_stats
    ADD COLUMN visits      bigint NOT NULL DEFAULT 0,
    ADD COLUMN bounces     bigint NOT NULL DEFAULT 0,
    ADD COLUMN duration_us bigint NOT NULL DEFAULT 0,  -- the sum over the day's visits
    ADD COLUMN events      bigint NOT NULL DEFAULT 0;  -- every event, page views included
ALTER TABLE daily_site_path_counts
    ADD COLUMN visitors bigint NOT NULL DEFAULT 0,
    ADD COLUMN visits   bigint NOT NULL DEFAULT 0;

-- Daily figures per value of each dimension, named as Plausible names its properties:
-- visit:source, visit:entry_page, ..., event:name, event:props:<key> (processor/rollups.py
-- lists them). A value the events do not tell is stored as '' (shown as "(not set)", or
-- "Direct / None" for a source). Pages are in daily_site_path_counts.
CREATE TABLE daily_dimension_stats (
    site_id     text COLLATE "C" NOT NULL,
    date        date NOT NULL,
    dimension   text COLLATE "C" NOT NULL,
    value       text COLLATE "C" NOT NULL,
    visitors    bigint NOT NULL DEFAULT 0,
    visits      bigint NOT NULL DEFAULT 0,
    pageviews   bigint NOT NULL DEFAULT 0,
    bounces     bigint NOT NULL DEFAULT 0,
    duration_us bigint NOT NULL DEFAULT 0,
    events      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, date, dimension, value)
) WITH (fillfactor = 70);

-- Retention: per-visitor rows go with the raw events of their days; rollups stay.
CREATE OR REPLACE FUNCTION drop_events_partitions_before(cutoff date) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    partition_name text;
    first_day date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ensure_events_partition'));
    FOR partition_name IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_p[0-9]{6}$'
        ORDER BY c.relname
    LOOP
        first_day := to_date(substr(partition_name, 9), 'YYYYMM');
        IF (first_day + interval '1 month')::date <= cutoff THEN
            EXECUTE format('DROP TABLE %I', partition_name);
            RETURN NEXT partition_name;
        END IF;
    END LOOP;
    -- Ids of events no longer stored: older than the oldest partition left.
    DELETE FROM event_ids
    WHERE date < (SELECT coalesce(min(to_date(substr(c.relname, 9), 'YYYYMM')), cutoff)
                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'events'::regclass);
    -- A local day starts at most 14 hours before its UTC day: keep the visitors of the
    -- day before the cutoff, whose last events may still be stored.
    DELETE FROM visitor_days WHERE date < cutoff - 1;
END
$$;
