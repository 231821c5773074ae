-- Profile (ID-9). The avatar is small (re-encoded to at most 256×256 PNG), so it lives here
-- rather than in the blob store.

CREATE TABLE profiles (
    account_id  BIGINT NOT NULL PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    nickname    TEXT,
    gender      TEXT,
    country     TEXT,
    locale      TEXT,
    avatar_png  BLOB,
    updated_at  BIGINT NOT NULL
);
