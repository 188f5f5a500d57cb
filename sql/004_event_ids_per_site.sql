-- The idempotency key becomes (event_id, site_id): an event_id is the client's key for
-- its retries on its own site, and one site's id must never make another site's event a
-- duplicate. event_id leads the key: new UUIDv7 ids land at the index's right end.

ALTER TABLE event_ids ADD COLUMN site_id text COLLATE "C";

UPDATE event_ids AS i SET site_id = e.site_id
FROM events AS e
WHERE e.event_id = i.event_id;

-- Ids of events no longer stored (none are expected): nothing to be a duplicate of.
DELETE FROM event_ids WHERE site_id IS NULL;

ALTER TABLE event_ids
    ALTER COLUMN site_id SET NOT NULL,
    DROP CONSTRAINT event_ids_pkey,
    ADD PRIMARY KEY (event_id, site_id);
