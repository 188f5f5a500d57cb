-- A site may be tracked by Umami's tracker, which names it by its Umami website id (a
-- UUID): that id maps to the site, so a switched site keeps its own site_id. Changing
-- it bumps the registry version like any change to sites (sql/006).

ALTER TABLE sites ADD COLUMN umami_website_id uuid UNIQUE;
