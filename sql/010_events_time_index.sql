-- The Stats API reads raw events by time: the last five minutes (realtime visitors) and
-- the days of a query the rollups cannot answer (report/raw.py). Events are written
-- roughly in time order, so a BRIN index (a few bytes per 128 pages, nothing per row)
-- finds a time range without the cost a B-tree would add to every insert.
-- autosummarize: each filled range is summarized soon, not only at VACUUM.
CREATE INDEX events_timestamp_brin ON events USING brin ("timestamp")
    WITH (autosummarize = on);
