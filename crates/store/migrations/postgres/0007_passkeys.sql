-- Passkeys (WebAuthn, ID-7) and the server-side state of their ceremonies.

CREATE TABLE passkeys (
    id             TEXT   NOT NULL PRIMARY KEY,
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    -- base64url of the authenticator's credential id; one credential belongs to one account.
    credential_id  TEXT   NOT NULL UNIQUE,
    name_enc       BYTEA  NOT NULL,
    -- The credential as webauthn-rs serialises it (public key, counter, flags): no secret.
    credential     TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT
);
CREATE INDEX passkeys_account ON passkeys (account_id);

-- A registration or authentication in progress. Taken (deleted) by the request that finishes
-- it, so an assertion can never be replayed against the same challenge.
CREATE TABLE webauthn_challenges (
    id          TEXT   NOT NULL PRIMARY KEY,
    purpose     TEXT   NOT NULL,
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    session_id  TEXT,
    state       TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX webauthn_challenges_account ON webauthn_challenges (account_id);
CREATE INDEX webauthn_challenges_expiry ON webauthn_challenges (expires_at);
