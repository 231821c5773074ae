-- Files (CL-5): content-addressed chunks in the blob store, files as lists of chunks, resumable
-- uploads, and the items (gallery, recordings, drive) that reference files.

-- The chunks an account has, deduplicated per account. A row exists only once its object is
-- durable in the blob store; `object_key` is unique to the row (hash + random suffix), so a key
-- is never reused after the row is collected.
CREATE TABLE blob_chunks (
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    hash        TEXT   NOT NULL,
    object_key  TEXT   NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, hash)
);

-- A finished file: its chunks in order. While `pending_since` is set, no item references it
-- yet and its bytes are counted in the usage category 'uploads'; once an item references it,
-- the item's size counts them.
CREATE TABLE files (
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id             TEXT   NOT NULL,
    size           BIGINT NOT NULL,
    content_hash   TEXT   NOT NULL,
    mime_type      TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    pending_since  BIGINT,
    PRIMARY KEY (account_id, id)
);

CREATE TABLE file_chunks (
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    file_id     TEXT   NOT NULL,
    idx         BIGINT NOT NULL,
    hash        TEXT   NOT NULL,
    size        BIGINT NOT NULL,
    PRIMARY KEY (account_id, file_id, idx)
);
CREATE INDEX file_chunks_hash ON file_chunks (account_id, hash);

-- Resumable uploads (tus). `committed` bytes are in whole chunks (upload_parts); the `tail_len`
-- bytes after them wait in the object `tail_key` until the next request completes a chunk.
-- Received bytes are counted in the usage category 'uploads' as they commit.
CREATE TABLE uploads (
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id          TEXT   NOT NULL,
    length      BIGINT NOT NULL,
    committed   BIGINT NOT NULL,
    tail_key    TEXT,
    tail_len    BIGINT NOT NULL,
    metadata    TEXT   NOT NULL,
    mime_type   TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    -- Set when the upload is complete: the file it became.
    file_id     TEXT,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX uploads_expiry ON uploads (expires_at);

CREATE TABLE upload_parts (
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    upload_id   TEXT   NOT NULL,
    idx         BIGINT NOT NULL,
    hash        TEXT   NOT NULL,
    size        BIGINT NOT NULL,
    PRIMARY KEY (account_id, upload_id, idx)
);
CREATE INDEX upload_parts_hash ON upload_parts (account_id, hash);

-- Objects to delete from the blob store once `due_at` passes: chunks and tails the database
-- no longer references (due at once), and objects being written whose row has not committed
-- yet (due after a grace period; the commit removes the entry). A crash at any point leaves
-- an entry, never an object nobody will delete.
CREATE TABLE blob_trash (
    object_key  TEXT   NOT NULL PRIMARY KEY,
    account_id  BIGINT NOT NULL,
    due_at      BIGINT NOT NULL
);
CREATE INDEX blob_trash_due ON blob_trash (due_at);

ALTER TABLE items ADD COLUMN file_id TEXT;
ALTER TABLE recycle_bin ADD COLUMN file_id TEXT;
CREATE INDEX items_file ON items (account_id, file_id);
CREATE INDEX recycle_bin_file ON recycle_bin (account_id, file_id);

-- The drive: an entry's place, `<parent id>/<name>` (an empty parent for the top level), unique
-- among live entries so that a folder never holds two entries of the same name; and its folder
-- (`path_parent`), by which a folder's entries are listed.
ALTER TABLE items ADD COLUMN path_key TEXT;
ALTER TABLE items ADD COLUMN path_parent TEXT;
ALTER TABLE recycle_bin ADD COLUMN path_key TEXT;
CREATE UNIQUE INDEX items_path ON items (account_id, collection_id, path_key) WHERE path_key IS NOT NULL;
CREATE INDEX items_parent ON items (account_id, collection_id, path_parent) WHERE path_parent IS NOT NULL;
