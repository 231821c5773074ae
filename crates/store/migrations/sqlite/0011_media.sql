-- The gallery's server-side view of each photo or video a gallery item references: what its
-- EXIF says (capture time; the place, sealed like other personal data), its size in pixels, and
-- its two previews in the blob store. Rows wait as 'pending' until the media worker (which
-- claims them with a lease, so a crashed node's work is picked up again) reads them.
CREATE TABLE media (
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    file_id       TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    lease_until   BIGINT,
    attempts      BIGINT NOT NULL,
    taken_at      BIGINT,
    place         BLOB,
    width         BIGINT,
    height        BIGINT,
    thumb_small   TEXT,
    thumb_large   TEXT,
    error         TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (account_id, file_id)
);
CREATE INDEX media_queue ON media (status, lease_until);
