-- A page of a gallery album is a range of one index, not a scan of the whole timeline: each
-- live gallery item has one row per album it is in, keyed by the album name's blind index (the
-- names themselves stay sealed in the item's body), with the item's place on the timeline
-- (`items.timeline_at`, kept equal to it by every transaction that changes it). Written with the
-- item, in the same transaction; gone when it is deleted, and with its row when the tombstone
-- is purged.
CREATE TABLE item_albums (
    account_id     BIGINT NOT NULL,
    collection_id  TEXT   NOT NULL,
    album          BYTEA  NOT NULL,
    item_id        TEXT   NOT NULL,
    timeline_at    BIGINT,
    -- Also what deleting an item's rows (and its foreign key) looks up by.
    PRIMARY KEY (account_id, collection_id, item_id, album),
    FOREIGN KEY (account_id, collection_id, item_id)
        REFERENCES items (account_id, collection_id, id) ON DELETE CASCADE
);
CREATE INDEX item_albums_timeline ON item_albums (account_id, collection_id, album, timeline_at DESC, item_id);

-- The name of each album a gallery has had, sealed (bound to the account, the gallery and the
-- blind index), so that its albums can be listed. A name whose last photo left stays, unlisted.
CREATE TABLE albums (
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    collection_id  TEXT   NOT NULL,
    album          BYTEA  NOT NULL,
    name           BYTEA  NOT NULL,
    PRIMARY KEY (account_id, collection_id, album)
);

-- Galleries written before this table: their albums are only in the sealed bodies, which the
-- server reads (and indexes) the first time one of their albums is asked for. Galleries made
-- from now on never appear here.
CREATE TABLE album_backfill (
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    collection_id  TEXT   NOT NULL,
    PRIMARY KEY (account_id, collection_id)
);
INSERT INTO album_backfill (account_id, collection_id)
    SELECT account_id, id FROM collections WHERE kind = 'gallery';
