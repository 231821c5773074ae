-- The recycle bin is listed a page at a time, newest first, per account: this index gives a
-- page by its cursor (deleted_at, id) without sorting the whole bin.
CREATE INDEX recycle_bin_account_age ON recycle_bin (account_id, deleted_at, id);
