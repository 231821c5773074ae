-- Data exports (ID-14): archives built in the background, downloadable until they expire.

CREATE TABLE exports (
    id          TEXT   NOT NULL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    status      TEXT   NOT NULL,
    size        BIGINT,
    created_at  BIGINT NOT NULL,
    ready_at    BIGINT,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX exports_account ON exports (account_id, created_at);
