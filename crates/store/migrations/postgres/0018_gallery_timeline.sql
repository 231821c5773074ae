-- The gallery's timeline is read a page at a time, newest first: each live gallery item keeps
-- its place on it (the time the device recorded, else the one read from the file, else
-- "undated", the smallest BIGINT, which sorts last), so that a page is a range of this index
-- instead of a sort of the whole gallery joined with its media rows. NULL for every other item
-- and for deleted ones: the index holds only what the timeline can show.
ALTER TABLE items ADD COLUMN timeline_at BIGINT;
UPDATE items SET timeline_at = COALESCE(
        starts_at,
        (SELECT m.taken_at FROM media m WHERE m.account_id = items.account_id AND m.file_id = items.file_id),
        -9223372036854775807 - 1)
    WHERE deleted_at IS NULL
      AND EXISTS (SELECT 1 FROM collections c
                  WHERE c.account_id = items.account_id AND c.id = items.collection_id AND c.kind = 'gallery');
CREATE INDEX items_timeline ON items (account_id, collection_id, timeline_at DESC, id)
    WHERE timeline_at IS NOT NULL;
