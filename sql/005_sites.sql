-- The site registry: which sites exist, the hostnames each may be tracked from, and the
-- time zone its days are counted in. A domain is a hostname ("shop.example") or a
-- hostname with all its subdomains ("*.shop.example").

CREATE TABLE sites (
    site_id    text COLLATE "C" PRIMARY KEY,
    domains    text[] NOT NULL DEFAULT '{}',
    time_zone  text NOT NULL DEFAULT 'UTC',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
