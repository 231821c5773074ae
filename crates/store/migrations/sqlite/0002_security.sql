-- Account security: step-up on sessions, TOTP, recovery codes, and the security audit log.

ALTER TABLE sessions ADD COLUMN stepped_up_until BIGINT NOT NULL DEFAULT 0;

CREATE TABLE totp_factors (
    account_id      BIGINT NOT NULL PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    secret_enc      BLOB   NOT NULL,
    created_at      BIGINT NOT NULL,
    confirmed_at    BIGINT,
    last_used_step  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE recovery_codes (
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    code_hash   BLOB   NOT NULL,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT,
    PRIMARY KEY (account_id, code_hash)
);

CREATE TABLE security_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    at          BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    ip          TEXT   NOT NULL,
    user_agent  TEXT   NOT NULL,
    session_id  TEXT,
    detail      TEXT
);
CREATE INDEX security_events_account ON security_events (account_id, at);
