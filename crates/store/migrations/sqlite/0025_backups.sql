-- Device backups (CL-7): a backup is a set of named parts (the installed apps, the home screen,
-- the wallpaper, alarms, settings, an app's data), each a file of the account. A backup row and
-- its parts are written in one transaction, only once every part's bytes are stored, so a
-- backup is never half there. Parts whose content an earlier backup of the account holds
-- reference the same file (an incremental backup uploads only what changed); such a file
-- counts once in the usage category 'backups'.
--
-- The device's name and model are copied: the backup of a lost phone stays listed as that
-- phone after the device is removed, which is when it is restored onto the new one.
CREATE TABLE backups (
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id             TEXT   NOT NULL,
    device_id      TEXT   NOT NULL,
    device_name    TEXT   NOT NULL,
    device_model   TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    -- The bytes of all parts (what a full restore downloads), and of the parts no earlier
    -- backup held (what this backup added).
    size           BIGINT NOT NULL,
    added          BIGINT NOT NULL,
    part_count     BIGINT NOT NULL,
    -- Verification re-reads the chunks of the parts and checks their hashes: due at
    -- verify_due_at, claimed by a node until verify_lease; its last result is verified_at and
    -- damage (NULL when intact). A check reads the files not read back within the verification
    -- period (files.checked_at), unless verify_full (a check its owner asked for) says all.
    verify_due_at  BIGINT,
    verify_full    BIGINT NOT NULL,
    verify_lease   BIGINT,
    verified_at    BIGINT,
    damage         TEXT,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX backups_device ON backups (account_id, device_id, created_at);
CREATE INDEX backups_verify ON backups (verify_due_at);

CREATE TABLE backup_parts (
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    backup_id     TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    kind          TEXT   NOT NULL,
    file_id       TEXT   NOT NULL,
    size          BIGINT NOT NULL,
    content_hash  TEXT   NOT NULL,
    PRIMARY KEY (account_id, backup_id, name)
);
CREATE INDEX backup_parts_file ON backup_parts (account_id, file_id);
CREATE INDEX backup_parts_content ON backup_parts (account_id, content_hash);

-- When a file's bytes were last read back and found intact by a backup's check: a file that
-- several backups hold is read once per verification period, not once per backup.
ALTER TABLE files ADD COLUMN checked_at BIGINT;
