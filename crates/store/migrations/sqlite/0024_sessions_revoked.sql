-- Every node reads the sessions revoked within an access token's lifetime every few seconds
-- (to stop their tokens at once, whichever node or `mica admin` revoked them): by this index,
-- not by a scan of every session.
CREATE INDEX sessions_revoked ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
