-- events becomes range-partitioned by month of its "timestamp" (UTC), so that retention
-- drops whole partitions instead of deleting rows. A partitioned table's unique index
-- must contain the partition key, which would make event_id unique only per month: the
-- idempotency key therefore moves to event_ids, an unpartitioned table of every stored
-- event_id (a BRIN index on date lets retention prune it cheaply). The events table
-- carries no index at all: nothing reads it on the hot path, and GET /stats reads the
-- aggregates. id stays an identity column, without the primary key the old table had.

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_event_id_key TO events_unpartitioned_event_id_key;

CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    event_id    uuid NOT NULL,
    site_id     text COLLATE "C" NOT NULL,
    event_type  text COLLATE "C" NOT NULL,
    path        text COLLATE "C" NOT NULL,
    user_id     text COLLATE "C",
    "timestamp" timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    visitor_id  uuid,
    client_ip   inet,
    user_agent  text
) PARTITION BY RANGE ("timestamp");

CREATE TABLE event_ids (
    event_id uuid PRIMARY KEY,
    date     date NOT NULL  -- UTC day of the event's timestamp, for retention
);
CREATE INDEX event_ids_date_brin ON event_ids USING brin (date);

-- The partition holding the given month: events_pYYYYMM, [first of month, first of next).
CREATE FUNCTION ensure_events_partition(month date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    first_day date := date_trunc('month', month)::date;
    name text := format('events_p%s', to_char(first_day, 'YYYYMM'));
BEGIN
    -- Serialise creators: CREATE TABLE IF NOT EXISTS alone can race with itself.
    PERFORM pg_advisory_xact_lock(hashtext('ensure_events_partition'));
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
        name,
        first_day::timestamp AT TIME ZONE 'UTC',
        (first_day + interval '1 month')::timestamp AT TIME ZONE 'UTC'
    );
END
$$;

-- Drop the partitions that end on or before the cutoff day, and their event ids;
-- returns the names of the partitions dropped.
CREATE FUNCTION drop_events_partitions_before(cutoff date) RETURNS SETOF text
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
END
$$;

-- Move what was stored before, keeping ids.
SELECT ensure_events_partition(month)
FROM (SELECT DISTINCT date_trunc('month', "timestamp" AT TIME ZONE 'UTC')::date AS month
      FROM events_unpartitioned) AS months;
SELECT ensure_events_partition((now() AT TIME ZONE 'UTC')::date);
SELECT ensure_events_partition(((now() AT TIME ZONE 'UTC') + interval '1 month')::date);

INSERT INTO events (id, event_id, site_id, event_type, path, user_id, "timestamp", received_at,
                    visitor_id, client_ip, user_agent)
OVERRIDING SYSTEM VALUE
SELECT id, event_id, site_id, event_type, path, user_id, "timestamp", received_at,
       visitor_id, client_ip, user_agent
FROM events_unpartitioned;
SELECT setval(pg_get_serial_sequence('events', 'id'),
              coalesce((SELECT max(id) FROM events_unpartitioned), 0) + 1, false);

INSERT INTO event_ids (event_id, date)
SELECT event_id, ("timestamp" AT TIME ZONE 'UTC')::date FROM events_unpartitioned;

DROP TABLE events_unpartitioned;
