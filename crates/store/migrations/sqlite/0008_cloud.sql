-- The personal cloud's sync engine (CL-1, CL-2, CL-3, CL-6): collections of items, one change
-- feed per account, the recycle bin, usage against one quota, and retried batches.

-- One row per account using the cloud. Every write locks it first (`UPDATE … SET seq = seq + n`),
-- which serialises an account's writers: changes commit in the order of their sequence numbers,
-- so a reader paging by sequence never skips one, and quota checks cannot race.
CREATE TABLE cloud_accounts (
    account_id   BIGINT NOT NULL PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    used_bytes   BIGINT NOT NULL,
    plan         TEXT   NOT NULL,
    -- NULL: the server's default quota.
    quota_bytes  BIGINT
);

CREATE TABLE collections (
    account_id   BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id           TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    name         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    -- Tombstones at or below this sequence number were purged: older tokens must resync.
    purged_seq   BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);

-- Live items and the tombstones of deleted ones (body NULL, deleted_at set).
CREATE TABLE items (
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    collection_id  TEXT   NOT NULL,
    id             TEXT   NOT NULL,
    -- The change that last touched the item: its version and its place in the change feed.
    seq            BIGINT NOT NULL,
    modified_at    BIGINT NOT NULL,
    deleted_at     BIGINT,
    size           BIGINT NOT NULL,
    -- The item's text (vCard, iCalendar or JSON), sealed; byte for byte what the client sent
    -- for vCard and iCalendar.
    body           BLOB,
    -- What listings show (a name, a title), sealed.
    summary        BLOB,
    uid            TEXT,
    starts_at      BIGINT,
    ends_at        BIGINT,
    PRIMARY KEY (account_id, collection_id, id)
);
CREATE INDEX items_feed ON items (account_id, collection_id, seq);
CREATE INDEX items_tombstones ON items (deleted_at);

CREATE TABLE recycle_bin (
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id             TEXT   NOT NULL,
    collection_id  TEXT   NOT NULL,
    item_id        TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    body           BLOB  NOT NULL,
    summary        BLOB,
    size           BIGINT NOT NULL,
    deleted_at     BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX recycle_bin_age ON recycle_bin (deleted_at);

-- Bytes and items per category ('recycle_bin' for what sits in the bin); they sum to
-- cloud_accounts.used_bytes, which `mica admin check-usage` proves.
CREATE TABLE cloud_usage (
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    category    TEXT   NOT NULL,
    bytes       BIGINT NOT NULL,
    items       BIGINT NOT NULL,
    PRIMARY KEY (account_id, category)
);

-- Applied batches by idempotency key, with their results, so a retry is answered, not re-applied.
CREATE TABLE sync_batches (
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    key           TEXT   NOT NULL,
    request_hash  BLOB  NOT NULL,
    results       TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (account_id, key)
);
CREATE INDEX sync_batches_age ON sync_batches (created_at);

-- Which categories each signed-in device syncs (keyed by its session until devices land).
CREATE TABLE sync_devices (
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    session_id  TEXT   NOT NULL,
    categories  TEXT   NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, session_id)
);
