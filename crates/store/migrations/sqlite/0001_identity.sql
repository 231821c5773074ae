-- Identity core: accounts, verification codes, sessions and refresh tokens, login records.
-- Times are milliseconds since the Unix epoch (UTC). Personal data is stored only sealed (*_enc)
-- with a keyed blind index (*_bidx) for look-up.

CREATE TABLE accounts (
    id                   BIGINT  NOT NULL PRIMARY KEY,
    email_enc            BLOB,
    email_bidx           BLOB    UNIQUE,
    phone_enc            BLOB,
    phone_bidx           BLOB    UNIQUE,
    password_hash        TEXT    NOT NULL,
    password_changed_at  BIGINT  NOT NULL,
    sessions_valid_after BIGINT  NOT NULL DEFAULT 0,
    failed_logins        INTEGER NOT NULL DEFAULT 0,
    locked_until         BIGINT  NOT NULL DEFAULT 0,
    status               TEXT    NOT NULL DEFAULT 'active',
    created_at           BIGINT  NOT NULL,
    CHECK (email_bidx IS NOT NULL OR phone_bidx IS NOT NULL)
);

CREATE TABLE verification_codes (
    id           TEXT    NOT NULL PRIMARY KEY,
    purpose      TEXT    NOT NULL,
    account_id   BIGINT  REFERENCES accounts(id) ON DELETE CASCADE,
    target_kind  TEXT    NOT NULL,
    target_enc   BLOB,
    target_bidx  BLOB    NOT NULL,
    code_hash    BLOB    NOT NULL,
    payload      TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    send_count   INTEGER NOT NULL DEFAULT 1,
    created_at   BIGINT  NOT NULL,
    last_sent_at BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    consumed_at  BIGINT
);
CREATE INDEX verification_codes_target ON verification_codes (target_bidx, purpose);
CREATE INDEX verification_codes_expiry ON verification_codes (expires_at);

CREATE TABLE sessions (
    id            TEXT   NOT NULL PRIMARY KEY,
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    ip            TEXT   NOT NULL,
    user_agent    TEXT   NOT NULL,
    device_model  TEXT,
    os_version    TEXT,
    client        TEXT
);
CREATE INDEX sessions_account ON sessions (account_id, created_at);

CREATE TABLE refresh_tokens (
    token_hash  BLOB   NOT NULL PRIMARY KEY,
    session_id  TEXT   NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE login_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    BIGINT  NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    at            BIGINT  NOT NULL,
    outcome       TEXT    NOT NULL,
    ip            TEXT    NOT NULL,
    user_agent    TEXT    NOT NULL,
    device_model  TEXT,
    os_version    TEXT,
    client        TEXT,
    session_id    TEXT
);
CREATE INDEX login_events_account ON login_events (account_id, at);
