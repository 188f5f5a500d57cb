-- API keys for the reporting routes, and a version number that every change to the
-- registry (sites or keys) bumps, so that a running server can tell with one cheap read
-- whether its copy of the registry is still current.

CREATE TABLE api_keys (
    -- The key's public part ("ak_" and 8 characters): how a key is named in lists,
    -- revoked, and found when presented. The secret part is kept only as a hash.
    prefix     text COLLATE "C" PRIMARY KEY,
    key_hash   bytea NOT NULL,             -- SHA-256 of the whole key
    name       text NOT NULL DEFAULT '',
    scope      text NOT NULL CHECK (scope IN ('stats:read', 'sites:admin')),
    site_ids   text[] NOT NULL DEFAULT '{}',  -- the sites it may read; empty: every site
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE registry_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  bigint NOT NULL
);
INSERT INTO registry_version (version) VALUES (1);

CREATE FUNCTION bump_registry_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_version SET version = version + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER sites_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON sites
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
