-- Schema version 2: the open grants of everyone without reading the ones that ended.
--
-- `grants_open` (version 1) finds a user's open grants, but an active grant keeps its status
-- once its end has passed (`expired` is derived from ends_at and the clock), so a listing of
-- every open grant (the dashboard, /metrics, `grants`) would read every grant that ever
-- expired. These two find pending requests, and active grants by their end, directly.
CREATE INDEX grants_pending ON grants (requested_at, id) WHERE status = 'pending';
CREATE INDEX grants_active_by_end ON grants (ends_at) WHERE status = 'active';
