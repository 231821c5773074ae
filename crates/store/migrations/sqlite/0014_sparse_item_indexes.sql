-- Only live items that stand for a file, and only deleted items, are looked up through these
-- two indexes (the garbage collector's "is this file still referenced", the tombstone purge).
-- Every other item has NULL there, and indexing those NULLs cost two B-tree insertions per
-- written item for nothing: the indexes now hold only the rows their queries can match.
DROP INDEX items_file;
CREATE INDEX items_file ON items (account_id, file_id) WHERE file_id IS NOT NULL;
DROP INDEX items_tombstones;
CREATE INDEX items_tombstones ON items (deleted_at) WHERE deleted_at IS NOT NULL;
