-- Linking a device by code (RFC 8628's device authorization grant, for Mica's own devices): a
-- device asks for a pair of codes, its owner enters the short one on a device already signed in
-- and approves it (step-up), and the device, polling with the long one, then gets its device
-- credential and its own session.
--
-- Both codes are stored as hashes: the device code (long, random) as SHA-256 like every token,
-- the user code (short, typed by a person) as a keyed blind index, so a copy of the database
-- does not let anyone guess it offline. What the device declared (name, model, hardware ids) is
-- sealed. A row goes when the device takes its approval, and when it expires.
CREATE TABLE device_link_requests (
    id                TEXT   NOT NULL PRIMARY KEY,
    device_code_hash  BYTEA  NOT NULL UNIQUE,
    user_code_bidx    BYTEA  NOT NULL UNIQUE,
    request           BYTEA  NOT NULL,
    ip                TEXT   NOT NULL,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    polled_at         BIGINT,
    -- Who decided, and how: approved 1, denied 0, NULL while nobody has.
    account_id        BIGINT REFERENCES accounts(id) ON DELETE CASCADE,
    session_id        TEXT,
    decided_at        BIGINT,
    approved          BIGINT
);
CREATE INDEX device_link_requests_expiry ON device_link_requests (expires_at);
CREATE INDEX device_link_requests_account ON device_link_requests (account_id);
