-- Schema version 3: node leases (`serve --node NAME`).
--
-- Each node holds one row on its name and renews it every few seconds. A row not renewed
-- within the lease term has lapsed: another node then ends the sessions that node left live
-- (in one transaction that locks and deletes the row, so exactly one node does it) and a
-- node starting with a name whose row is fresh is refused. Times are the database's
-- (now()), so the nodes' clocks need not agree. A clean stop deletes the row.
CREATE TABLE nodes (
    name text PRIMARY KEY,
    -- The machine and process holding it: a restart on the same machine takes over a row
    -- whose process is gone at once.
    host text NOT NULL,
    pid integer NOT NULL,
    -- Random per start, so a renewal only ever renews its own start's row.
    instance text NOT NULL,
    started timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now()
);

-- The live sessions of one node, for the node that ends them once its lease lapsed.
CREATE INDEX sessions_live_by_node ON sessions ((record->>'node')) WHERE state = 'live';
