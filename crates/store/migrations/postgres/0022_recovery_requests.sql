-- Account recovery when every factor is lost (ID-18): a request made without signing in, from a
-- contact address the requester proved they hold. It waits (while every address and device of
-- the account is told, and the owner can cancel it), then an operator approves or denies it.
-- account_id is NULL when the login given matches no account: the requester is answered the
-- same way, and the operator sees that nothing matched.
CREATE TABLE recovery_requests (
    id             TEXT   NOT NULL PRIMARY KEY,
    account_id     BIGINT REFERENCES accounts(id) ON DELETE CASCADE,
    -- What was typed to name the account (a blind index): filings are limited per login, the
    -- same whether or not it matches an account.
    login_bidx     BYTEA  NOT NULL,
    contact_kind   TEXT   NOT NULL,
    contact_enc    BYTEA  NOT NULL,
    contact_bidx   BYTEA  NOT NULL,
    statement_enc  BYTEA  NOT NULL,
    answers_given  BIGINT NOT NULL DEFAULT 0,
    answers_right  BIGINT NOT NULL DEFAULT 0,
    known_ip       BIGINT NOT NULL DEFAULT 0,
    ip             TEXT   NOT NULL,
    user_agent     TEXT   NOT NULL,
    -- unverified → waiting → in_review → approved → completed; or cancelled / denied / expired.
    state          TEXT   NOT NULL,
    cancel_hash    BYTEA,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    wait_until     BIGINT,
    decided_at     BIGINT,
    decided_by     TEXT,
    -- The operator's note (never shown to the requester).
    note           TEXT,
    -- Why it was denied, cancelled or expired (shown to the requester).
    reason         TEXT
);
CREATE INDEX recovery_requests_account ON recovery_requests (account_id, state);
CREATE INDEX recovery_requests_state ON recovery_requests (state, wait_until);
CREATE INDEX recovery_requests_login ON recovery_requests (login_bidx, created_at);
