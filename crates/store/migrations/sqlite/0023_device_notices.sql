-- Notices for an account's devices (a request to recover the account, say): kept until they
-- stop mattering, so a device that was off when one was sent is told when it next connects.
-- Each linked device says when it has shown one (device_notices_seen), and is not sent it
-- again. about names what a notice is about (a recovery request's id): it is withdrawn with it.
CREATE TABLE device_notices (
    id          TEXT   NOT NULL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind        TEXT   NOT NULL,
    -- The title and text, sealed.
    body        BLOB  NOT NULL,
    about       TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX device_notices_account ON device_notices (account_id, expires_at);
CREATE INDEX device_notices_about ON device_notices (about);
CREATE INDEX device_notices_expiry ON device_notices (expires_at);

CREATE TABLE device_notices_seen (
    notice_id   TEXT   NOT NULL REFERENCES device_notices(id) ON DELETE CASCADE,
    device_id   TEXT   NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    seen_at     BIGINT NOT NULL,
    PRIMARY KEY (notice_id, device_id)
);
CREATE INDEX device_notices_seen_device ON device_notices_seen (device_id);
