-- Where each event came from, on what and from where: derived by the processor from the
-- event's url, referrer and User-Agent, and at the edge from the client's address
-- (processor/enrich.py). NULL where the event does not tell (shown as "(not set)", or
-- "Direct / None" for a source). No index: the rollups of the visits work read these
-- once, as events are stored. Adding columns with constant defaults rewrites nothing.

ALTER TABLE events
    ADD COLUMN hostname        text COLLATE "C",
    ADD COLUMN referrer        text COLLATE "C",   -- host and path, no query
    ADD COLUMN source          text COLLATE "C",   -- e.g. Google, news.example
    ADD COLUMN utm_source      text COLLATE "C",
    ADD COLUMN utm_medium      text COLLATE "C",
    ADD COLUMN utm_campaign    text COLLATE "C",
    ADD COLUMN utm_content     text COLLATE "C",
    ADD COLUMN utm_term        text COLLATE "C",
    ADD COLUMN click_id        text COLLATE "C",   -- the parameter's name (gclid, ...), never its value
    ADD COLUMN screen_width    integer,
    ADD COLUMN device          text COLLATE "C",   -- Desktop, Tablet, Mobile
    ADD COLUMN browser         text COLLATE "C",
    ADD COLUMN browser_version text COLLATE "C",
    ADD COLUMN os              text COLLATE "C",
    ADD COLUMN os_version      text COLLATE "C",
    ADD COLUMN country         text COLLATE "C",   -- ISO 3166-1 alpha-2
    ADD COLUMN props           jsonb,              -- custom properties: text keys and values
    ADD COLUMN interactive     boolean NOT NULL DEFAULT true;
