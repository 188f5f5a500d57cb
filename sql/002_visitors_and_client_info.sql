-- Visitors without a user_id are counted by a daily-rotating, salted hash of site, IP and
-- User-Agent (see ingest/visitors.py). The raw IP and User-Agent are stored only where
-- STORE_CLIENT_INFO is on; otherwise these columns stay NULL.

ALTER TABLE events
    ADD COLUMN visitor_id  uuid,
    ADD COLUMN client_ip   inet,
    ADD COLUMN user_agent  text;

-- One row per (site, day, visitor) ever seen; unique_users = distinct users + visitors.
CREATE TABLE daily_site_visitors (
    site_id    text COLLATE "C" NOT NULL,
    date       date NOT NULL,
    visitor_id uuid NOT NULL,
    PRIMARY KEY (site_id, date, visitor_id)
);
