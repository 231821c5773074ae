-- Durable background jobs (account deletion first), claimed with leases so a crashed node's
-- work is picked up again.

CREATE TABLE jobs (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         TEXT    NOT NULL,
    account_id   BIGINT,
    step         BIGINT  NOT NULL DEFAULT 0,
    attempts     BIGINT  NOT NULL DEFAULT 0,
    run_after    BIGINT  NOT NULL,
    lease_until  BIGINT  NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   BIGINT  NOT NULL
);
CREATE INDEX jobs_due ON jobs (run_after, lease_until);
CREATE UNIQUE INDEX jobs_one_deletion ON jobs (account_id, kind);
