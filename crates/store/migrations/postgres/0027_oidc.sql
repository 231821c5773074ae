-- Mica as an OpenID Connect provider (ID-16) for the operator's other products.
--
-- A client is an application the operator registered (`mica admin oidc add-client`); a
-- confidential one keeps a secret, stored as a hash like every token. A grant is what an account
-- allowed a client to know (the consent it gave, remembered so it is asked once), and what the
-- "apps" page lists and revokes. Tokens given to a client belong to an ordinary session marked
-- with the client (`sessions.oidc_client`): its refresh tokens rotate and a reused one revokes
-- the family, and signing out everywhere, a password reset or revoking the app ends them.
CREATE TABLE oidc_clients (
    id             TEXT   NOT NULL PRIMARY KEY,
    name           TEXT   NOT NULL,
    secret_hash    BYTEA,
    redirect_uris  TEXT   NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE oidc_grants (
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    client_id     TEXT   NOT NULL REFERENCES oidc_clients(id) ON DELETE CASCADE,
    scope         TEXT   NOT NULL,
    granted_at    BIGINT NOT NULL,
    last_used_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, client_id)
);
CREATE INDEX oidc_grants_client ON oidc_grants (client_id);

-- Authorization codes: single use, a minute long; `session_id` is the session the code's
-- exchange opened, revoked if the code is presented again (RFC 6749 §4.1.2, `reused_at`).
-- `browser_session` is the portal session that approved it: a code outlives neither it nor a
-- "sign out everywhere".
CREATE TABLE oidc_codes (
    code_hash       BYTEA   NOT NULL PRIMARY KEY,
    client_id       TEXT   NOT NULL REFERENCES oidc_clients(id) ON DELETE CASCADE,
    account_id      BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    redirect_uri    TEXT   NOT NULL,
    scope           TEXT   NOT NULL,
    nonce           TEXT,
    code_challenge  TEXT,
    auth_time       BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    browser_session TEXT   NOT NULL,
    used_at         BIGINT,
    session_id      TEXT,
    reused_at       BIGINT
);
CREATE INDEX oidc_codes_session ON oidc_codes (session_id);
CREATE INDEX oidc_codes_expiry ON oidc_codes (expires_at);
CREATE INDEX oidc_codes_account ON oidc_codes (account_id);

-- The device authorization grant (RFC 8628): a TV or a command line shows `user_code`, the
-- person types it on the portal and approves; the device polls with its device code.
CREATE TABLE oidc_device_codes (
    device_hash    BYTEA   NOT NULL PRIMARY KEY,
    user_code      TEXT   NOT NULL UNIQUE,
    client_id      TEXT   NOT NULL REFERENCES oidc_clients(id) ON DELETE CASCADE,
    scope          TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    next_poll_at   BIGINT NOT NULL,
    status         TEXT   NOT NULL,
    account_id     BIGINT REFERENCES accounts(id) ON DELETE CASCADE,
    auth_time      BIGINT,
    browser_session TEXT
);
CREATE INDEX oidc_device_codes_expiry ON oidc_device_codes (expires_at);
CREATE INDEX oidc_device_codes_account ON oidc_device_codes (account_id);

-- The keys ID tokens are signed with (RS256). The newest is the one in use; the others stay
-- published in the JWKS until every ID token they signed has expired, then are deleted. The
-- private key is sealed under the master key; the public one is kept as its JWK. At most one
-- key is current (not retired), whatever the nodes do at once.
CREATE TABLE oidc_keys (
    kid          TEXT   NOT NULL PRIMARY KEY,
    private_key  BYTEA   NOT NULL,
    public_jwk   TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT
);
CREATE UNIQUE INDEX oidc_keys_current ON oidc_keys ((retired_at IS NULL)) WHERE retired_at IS NULL;

ALTER TABLE sessions ADD COLUMN oidc_client TEXT;
ALTER TABLE sessions ADD COLUMN oidc_scope TEXT;
ALTER TABLE sessions ADD COLUMN oidc_auth_time BIGINT;
CREATE INDEX sessions_oidc ON sessions (account_id, oidc_client) WHERE oidc_client IS NOT NULL;
