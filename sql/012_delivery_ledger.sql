-- The delivery ledger (processor/ledger.py): what became of every event the ingest server
-- accepted, per site and UTC day of the event's own time. The ingest server counts what it
-- accepted, ignored and rejected in Redis, in the same transaction as its XADDs; the
-- processor counts here, in the same transaction as its rows, what it stored, found to be
-- a duplicate, dropped (its site not registered) or dead-lettered.

-- The stream entry that stored each event (NULL: stored before this migration). An entry
-- that comes again after its batch committed (its acknowledgement lost to a crash) finds
-- its own id here and is not counted twice; another entry with the same (site, event_id)
-- is a duplicate.
ALTER TABLE event_ids ADD COLUMN entry_id bytea;

CREATE TABLE delivery_ledger (
    site_id       text COLLATE "C" NOT NULL,
    date          date NOT NULL,  -- UTC day of the event's timestamp
    stored        bigint NOT NULL DEFAULT 0,
    duplicates    bigint NOT NULL DEFAULT 0,
    dropped       bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, date)
);

-- Entries counted as something other than stored, each once: a second delivery of one
-- (or another processor's, at the same time) conflicts here and is not counted again.
-- Kept while the stream may still hold the entry (processor/maintenance.py prunes them).
CREATE TABLE ledger_entries (
    entry_id  bytea PRIMARY KEY,
    entry_ms  bigint NOT NULL,  -- the entry id's milliseconds, for pruning
    site_id   text COLLATE "C" NOT NULL,
    date      date NOT NULL,
    outcome   text NOT NULL CHECK (outcome IN ('duplicate', 'dropped', 'dead_lettered'))
);
CREATE INDEX ledger_entries_entry_ms ON ledger_entries (entry_ms);
