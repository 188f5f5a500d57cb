-- Shard leases (processor/leases.py): which processor owns a stream shard's visits, until
-- when, and a fencing number that grows with every new owner. Each batch an owner writes
-- checks its number in the same transaction, so a processor that lost its lease while it
-- was stopped (a pause, a partition) cannot commit what it counted from stale memory.
CREATE TABLE shard_leases (
    stream_key text COLLATE "C" NOT NULL,  -- the shard's stream (common/shards.py)
    owner      text COLLATE "C" NOT NULL,
    fence      bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (stream_key)
);
