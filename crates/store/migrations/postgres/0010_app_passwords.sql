-- App passwords (CL-5, WebDAV): per-device passwords a person creates for clients that only
-- speak HTTP Basic (rclone, davfs2, Finder, Explorer, phone file managers), revocable one by
-- one, never the main password. They are random and long, so a SHA-256 hash is stored (like
-- tokens), and checking one costs no password hash on every WebDAV request.
CREATE TABLE app_passwords (
    id            TEXT   NOT NULL PRIMARY KEY,
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name          TEXT   NOT NULL,
    secret_hash   BYTEA  NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX app_passwords_account ON app_passwords (account_id);
