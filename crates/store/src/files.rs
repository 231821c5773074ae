//! Files: content-addressed chunks, files as ordered lists of chunks, resumable uploads, and the
//! blob-store objects waiting to be deleted.
//!
//! Every change here locks the account's `cloud_accounts` row first, like the sync engine, so it
//! is serialised with the account's item writes: usage and the quota are checked and updated in
//! the same transaction as the rows that cause them, and the garbage collector, which decides
//! under the same lock that a chunk is unreferenced, cannot race an upload that is about to
//! reference it.
//!
//! Bytes are written to the blob store *before* the row that references them commits. The key of
//! a new object is first recorded in `blob_trash` with a grace period (an intent); the commit that
//! references it removes that entry. A crash between the two leaves an entry that the collector
//! honours later, never an object nobody knows about.

use mica_core::{AccountId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::cloud::{add_usage, lock_account};
use crate::{Result, Store};

/// Usage category of bytes received by uploads and of finished files no item references yet.
pub const UPLOADS_CATEGORY: &str = "uploads";

#[derive(Debug, Clone)]
pub struct UploadRow {
    pub id: String,
    pub length: i64,
    pub committed: i64,
    pub tail_key: Option<String>,
    pub tail_len: i64,
    pub metadata: String,
    pub mime_type: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub file_id: Option<String>,
}

impl UploadRow {
    /// Bytes received so far: the tus `Upload-Offset`.
    pub fn offset(&self) -> i64 {
        self.committed + self.tail_len
    }
}

#[derive(Debug, Clone)]
pub struct NewUpload<'a> {
    pub id: &'a str,
    pub length: i64,
    pub metadata: &'a str,
    pub mime_type: &'a str,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: String,
    pub size: i64,
    pub content_hash: String,
    pub mime_type: String,
    pub created_at: Timestamp,
    pub pending_since: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct FileChunk {
    pub hash: String,
    pub size: i64,
    pub object_key: String,
}

/// A whole chunk an upload has received, to be added to it.
#[derive(Debug, Clone)]
pub struct NewPart<'a> {
    pub hash: &'a str,
    pub size: i64,
    /// The object just written for it, when the account did not have the chunk yet.
    pub written_key: Option<&'a str>,
}

/// Where an upload stands, as its client last saw it: a commit applies only if this still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadPosition {
    pub committed: i64,
    pub tail_len: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressOutcome {
    /// Applied. Objects no longer needed (a replaced tail, or a chunk written for nothing
    /// because the account had it by then) are queued for deletion.
    Applied,
    /// The part's chunk is not in the account's store, or the object written for it waited
    /// past its intent (the collector may have it): write it, then commit again with its key.
    NeedsWrite,
    /// The upload moved on (another request) or is gone.
    Moved,
    /// The bytes do not fit in the quota.
    QuotaExceeded { used: i64, quota: i64, needed: i64 },
}

/// What a garbage-collection pass found and what is left to do with the blob store.
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub uploads_expired: u64,
    pub files_removed: u64,
    pub chunks_removed: u64,
}

fn upload_row(r: &AnyRow) -> Result<UploadRow> {
    Ok(UploadRow {
        id: r.try_get("id")?,
        length: r.try_get("length")?,
        committed: r.try_get("committed")?,
        tail_key: r.try_get("tail_key")?,
        tail_len: r.try_get("tail_len")?,
        metadata: r.try_get("metadata")?,
        mime_type: r.try_get("mime_type")?,
        created_at: Timestamp(r.try_get("created_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        file_id: r.try_get("file_id")?,
    })
}

fn file_row(r: &AnyRow) -> Result<FileRow> {
    Ok(FileRow {
        id: r.try_get("id")?,
        size: r.try_get("size")?,
        content_hash: r.try_get("content_hash")?,
        mime_type: r.try_get("mime_type")?,
        created_at: Timestamp(r.try_get("created_at")?),
        pending_since: r.try_get::<Option<i64>, _>("pending_since")?.map(Timestamp),
    })
}

const UPLOAD_COLUMNS: &str = "id, length, committed, tail_key, tail_len, metadata, mime_type, created_at, expires_at, file_id";
const FILE_COLUMNS: &str = "id, size, content_hash, mime_type, created_at, pending_since";

pub(crate) async fn trash(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    key: &str,
    due: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO blob_trash (object_key, account_id, due_at) VALUES ($1, $2, $3) \
         ON CONFLICT (object_key) DO UPDATE SET due_at = excluded.due_at",
    )
    .bind(key)
    .bind(account.as_i64())
    .bind(due.millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn untrash(tx: &mut Transaction<'static, Any>, key: &str) -> Result<()> {
    sqlx::query("DELETE FROM blob_trash WHERE object_key = $1")
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Takes over the intent recorded for a written object, in the transaction that references it:
/// `false` when the intent is gone or due — the collector may have deleted the object, or be
/// about to — so the caller must not reference it (and writes it again, or gives up). Only the
/// account's own intent: one handed to no account by the account's deletion stays for the
/// collector.
pub(crate) async fn claim(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    key: &str,
    now: Timestamp,
) -> Result<bool> {
    let n = sqlx::query(
        "DELETE FROM blob_trash WHERE object_key = $1 AND due_at > $2 AND account_id = $3",
    )
    .bind(key)
    .bind(now.millis())
    .bind(account.as_i64())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

impl Store {
    /// Records that `key` is about to be written: if nothing references it by `due`, the
    /// collector deletes it.
    pub async fn blob_intent(&self, account: AccountId, key: &str, due: Timestamp) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        trash(&mut tx, account, key, due).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Queues an object for deletion now (a write that was not used).
    pub async fn discard_blob(&self, account: AccountId, key: &str, now: Timestamp) -> Result<()> {
        self.blob_intent(account, key, now).await
    }

    pub async fn create_upload(
        &self,
        account: AccountId,
        u: &NewUpload<'_>,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO uploads (account_id, id, length, committed, tail_key, tail_len, metadata, mime_type, created_at, expires_at, file_id) \
             VALUES ($1, $2, $3, 0, NULL, 0, $4, $5, $6, $7, NULL)",
        )
        .bind(account.as_i64())
        .bind(u.id)
        .bind(u.length)
        .bind(u.metadata)
        .bind(u.mime_type)
        .bind(now.millis())
        .bind(u.expires_at.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn upload(&self, account: AccountId, id: &str) -> Result<Option<UploadRow>> {
        sqlx::query(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE account_id = $1 AND id = $2"
        ))
        .bind(account.as_i64())
        .bind(id)
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(upload_row)
        .transpose()
    }

    /// The account's chunk with this hash, if it has it.
    pub async fn chunk(&self, account: AccountId, hash: &str) -> Result<Option<FileChunk>> {
        sqlx::query(
            "SELECT hash, size, object_key FROM blob_chunks WHERE account_id = $1 AND hash = $2",
        )
        .bind(account.as_i64())
        .bind(hash)
        .fetch_optional(&self.writer)
        .await?
        .map(|r| {
            Ok(FileChunk {
                hash: r.try_get("hash")?,
                size: r.try_get("size")?,
                object_key: r.try_get("object_key")?,
            })
        })
        .transpose()
    }

    /// Moves an upload forward from `at`: adds a whole chunk (`part`), and/or replaces the bytes
    /// waiting after the last chunk (`tail`: the new object and its length, or `None` when no
    /// bytes wait). Charges the bytes against the quota in the same transaction. An upload
    /// that moves is kept until `expires_at` (it expires when idle, not when old).
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_progress(
        &self,
        account: AccountId,
        upload_id: &str,
        at: UploadPosition,
        part: Option<NewPart<'_>>,
        tail: Option<(&str, i64)>,
        default_quota: i64,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<ProgressOutcome> {
        let mut tx = self.writer.begin().await?;
        let acct = lock_account(&mut tx, account, 0).await?;
        let Some(up) = upload_in(&mut tx, account, upload_id).await? else {
            return Ok(ProgressOutcome::Moved);
        };
        if up.file_id.is_some() || up.committed != at.committed || up.tail_len != at.tail_len {
            return Ok(ProgressOutcome::Moved);
        }
        let part_size = part.as_ref().map_or(0, |p| p.size);
        let tail_len = tail.map_or(0, |t| t.1);
        let needed = part_size + tail_len - up.tail_len;
        let quota = acct.quota(default_quota);
        if needed > 0 && acct.used_bytes + needed > quota {
            return Ok(ProgressOutcome::QuotaExceeded {
                used: acct.used_bytes,
                quota,
                needed,
            });
        }
        if let Some(p) = &part {
            let have = sqlx::query(
                "SELECT object_key FROM blob_chunks WHERE account_id = $1 AND hash = $2",
            )
            .bind(account.as_i64())
            .bind(p.hash)
            .fetch_optional(&mut *tx)
            .await?;
            match (have, p.written_key) {
                (Some(_), Some(written)) => {
                    // Someone stored the same chunk meanwhile: ours is surplus.
                    trash(&mut tx, account, written, now).await?;
                }
                (Some(_), None) => {}
                (None, Some(written)) => {
                    if !claim(&mut tx, account, written, now).await? {
                        return Ok(ProgressOutcome::NeedsWrite);
                    }
                    sqlx::query(
                        "INSERT INTO blob_chunks (account_id, hash, object_key, size, created_at) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(account.as_i64())
                    .bind(p.hash)
                    .bind(written)
                    .bind(p.size)
                    .bind(now.millis())
                    .execute(&mut *tx)
                    .await?;
                }
                (None, None) => return Ok(ProgressOutcome::NeedsWrite),
            }
            let idx = up.committed / CHUNK_BYTES;
            sqlx::query(
                "INSERT INTO upload_parts (account_id, upload_id, idx, hash, size) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(account.as_i64())
            .bind(upload_id)
            .bind(idx)
            .bind(p.hash)
            .bind(p.size)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(old) = &up.tail_key {
            if tail.map(|t| t.0) != Some(old.as_str()) {
                trash(&mut tx, account, old, now).await?;
            }
        }
        if let Some((key, _)) = tail {
            if !claim(&mut tx, account, key, now).await? {
                return Ok(ProgressOutcome::NeedsWrite);
            }
        }
        sqlx::query(
            "UPDATE uploads SET committed = committed + $3, tail_key = $4, tail_len = $5, \
             expires_at = $6 WHERE account_id = $1 AND id = $2",
        )
        .bind(account.as_i64())
        .bind(upload_id)
        .bind(part_size)
        .bind(tail.map(|t| t.0.to_owned()))
        .bind(tail_len)
        .bind(expires_at.millis())
        .execute(&mut *tx)
        .await?;
        add_usage(&mut tx, account, UPLOADS_CATEGORY, needed, 0).await?;
        tx.commit().await?;
        Ok(ProgressOutcome::Applied)
    }

    /// Turns a fully received upload into a file (pending until an item references it).
    /// Returns the file, or `None` when the upload is not complete or already finished.
    pub async fn complete_upload(
        &self,
        account: AccountId,
        upload_id: &str,
        file_id: &str,
        content_hash: &str,
        now: Timestamp,
    ) -> Result<Option<FileRow>> {
        let mut tx = self.writer.begin().await?;
        lock_account(&mut tx, account, 0).await?;
        let Some(up) = upload_in(&mut tx, account, upload_id).await? else {
            return Ok(None);
        };
        if up.file_id.is_some() || up.committed != up.length || up.tail_len != 0 {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO files (account_id, id, size, content_hash, mime_type, created_at, pending_since) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(account.as_i64())
        .bind(file_id)
        .bind(up.length)
        .bind(content_hash)
        .bind(&up.mime_type)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO file_chunks (account_id, file_id, idx, hash, size) \
             SELECT account_id, $3, idx, hash, size FROM upload_parts WHERE account_id = $1 AND upload_id = $2",
        )
        .bind(account.as_i64())
        .bind(upload_id)
        .bind(file_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM upload_parts WHERE account_id = $1 AND upload_id = $2")
            .bind(account.as_i64())
            .bind(upload_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE uploads SET file_id = $3 WHERE account_id = $1 AND id = $2")
            .bind(account.as_i64())
            .bind(upload_id)
            .bind(file_id)
            .execute(&mut *tx)
            .await?;
        add_usage(&mut tx, account, UPLOADS_CATEGORY, 0, 1).await?;
        tx.commit().await?;
        Ok(Some(FileRow {
            id: file_id.to_owned(),
            size: up.length,
            content_hash: content_hash.to_owned(),
            mime_type: up.mime_type,
            created_at: now,
            pending_since: Some(now),
        }))
    }

    /// The hashes of an upload's parts, in order (to compute the content hash at completion).
    pub async fn upload_part_hashes(
        &self,
        account: AccountId,
        upload_id: &str,
    ) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT hash FROM upload_parts WHERE account_id = $1 AND upload_id = $2 ORDER BY idx",
        )
        .bind(account.as_i64())
        .bind(upload_id)
        .fetch_all(&self.writer)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("hash")?))
        .collect()
    }

    /// Ends an unfinished upload (terminated by its client, refused at the quota, or expired):
    /// its parts go, its bytes are released, its tail is queued for deletion. A finished
    /// upload's row just goes (its file stays). Returns whether there was one.
    pub async fn remove_upload(
        &self,
        account: AccountId,
        upload_id: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        lock_account(&mut tx, account, 0).await?;
        let found = remove_upload_tx(&mut tx, account, upload_id, now).await?;
        tx.commit().await?;
        Ok(found)
    }

    pub async fn file(&self, account: AccountId, id: &str) -> Result<Option<FileRow>> {
        sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE account_id = $1 AND id = $2"
        ))
        .bind(account.as_i64())
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(file_row)
        .transpose()
    }

    /// A file's chunks in order, with where each is stored.
    pub async fn file_chunks(&self, account: AccountId, file_id: &str) -> Result<Vec<FileChunk>> {
        sqlx::query(
            "SELECT fc.hash AS hash, fc.size AS size, bc.object_key AS object_key \
             FROM file_chunks fc JOIN blob_chunks bc ON bc.account_id = fc.account_id AND bc.hash = fc.hash \
             WHERE fc.account_id = $1 AND fc.file_id = $2 ORDER BY fc.idx",
        )
        .bind(account.as_i64())
        .bind(file_id)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(FileChunk {
                hash: r.try_get("hash")?,
                size: r.try_get("size")?,
                object_key: r.try_get("object_key")?,
            })
        })
        .collect()
    }

    /// Accounts that may have something to collect: expired uploads, pending files, chunks or
    /// objects waiting for deletion.
    pub async fn accounts_with_blobs(&self) -> Result<Vec<AccountId>> {
        sqlx::query(
            "SELECT account_id FROM blob_chunks UNION SELECT account_id FROM uploads \
             UNION SELECT account_id FROM blob_trash UNION SELECT account_id FROM files",
        )
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| Ok(AccountId::from_i64(r.try_get("account_id")?)))
        .filter_map(|r: Result<Option<AccountId>>| r.transpose())
        .collect()
    }

    /// One collection pass over an account, in one transaction: expired uploads end, files
    /// still pending at `pending_cutoff` and files no item references any more are removed,
    /// and chunks no file or upload references are released; their objects are queued in
    /// `blob_trash` (see [`Store::due_blobs`]).
    pub async fn collect_garbage(
        &self,
        account: AccountId,
        now: Timestamp,
        pending_cutoff: Timestamp,
    ) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut tx = self.writer.begin().await?;
        lock_account(&mut tx, account, 0).await?;
        let expired: Vec<String> =
            sqlx::query("SELECT id FROM uploads WHERE account_id = $1 AND expires_at <= $2")
                .bind(account.as_i64())
                .bind(now.millis())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("id"))
                .collect::<std::result::Result<_, _>>()?;
        for id in &expired {
            remove_upload_tx(&mut tx, account, id, now).await?;
            report.uploads_expired += 1;
        }
        // Pending files nobody attached in time.
        let stale = sqlx::query(
            "SELECT id, size FROM files WHERE account_id = $1 AND pending_since IS NOT NULL AND pending_since <= $2",
        )
        .bind(account.as_i64())
        .bind(pending_cutoff.millis())
        .fetch_all(&mut *tx)
        .await?;
        let mut doomed: Vec<String> = Vec::new();
        for r in &stale {
            let size: i64 = r.try_get("size")?;
            add_usage(&mut tx, account, UPLOADS_CATEGORY, -size, -1).await?;
            doomed.push(r.try_get("id")?);
        }
        // Attached files that no item, live or in the recycle bin, and no backup references any
        // more.
        for r in sqlx::query(
            "SELECT f.id AS id FROM files f WHERE f.account_id = $1 AND f.pending_since IS NULL \
             AND NOT EXISTS (SELECT 1 FROM items i WHERE i.account_id = f.account_id AND i.file_id = f.id) \
             AND NOT EXISTS (SELECT 1 FROM recycle_bin b WHERE b.account_id = f.account_id AND b.file_id = f.id) \
             AND NOT EXISTS (SELECT 1 FROM backup_parts p WHERE p.account_id = f.account_id AND p.file_id = f.id)",
        )
        .bind(account.as_i64())
        .fetch_all(&mut *tx)
        .await?
        {
            doomed.push(r.try_get("id")?);
        }
        for id in &doomed {
            for r in sqlx::query(
                "SELECT thumb_small, thumb_large FROM media WHERE account_id = $1 AND file_id = $2",
            )
            .bind(account.as_i64())
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            {
                for col in ["thumb_small", "thumb_large"] {
                    if let Some(k) = r.try_get::<Option<String>, _>(col)? {
                        trash(&mut tx, account, &k, now).await?;
                    }
                }
            }
            sqlx::query("DELETE FROM media WHERE account_id = $1 AND file_id = $2")
                .bind(account.as_i64())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM file_chunks WHERE account_id = $1 AND file_id = $2")
                .bind(account.as_i64())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM files WHERE account_id = $1 AND id = $2")
                .bind(account.as_i64())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            report.files_removed += 1;
        }
        let unreferenced = sqlx::query(
            "SELECT c.hash AS hash, c.object_key AS object_key FROM blob_chunks c WHERE c.account_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM file_chunks f WHERE f.account_id = c.account_id AND f.hash = c.hash) \
             AND NOT EXISTS (SELECT 1 FROM upload_parts p WHERE p.account_id = c.account_id AND p.hash = c.hash)",
        )
        .bind(account.as_i64())
        .fetch_all(&mut *tx)
        .await?;
        for r in &unreferenced {
            let hash: String = r.try_get("hash")?;
            let key: String = r.try_get("object_key")?;
            sqlx::query("DELETE FROM blob_chunks WHERE account_id = $1 AND hash = $2")
                .bind(account.as_i64())
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            trash(&mut tx, account, &key, now).await?;
            report.chunks_removed += 1;
        }
        tx.commit().await?;
        Ok(report)
    }

    /// An account's chunks: `(hash, object key, size)`.
    pub async fn account_chunks(&self, account: AccountId) -> Result<Vec<(String, String, i64)>> {
        sqlx::query("SELECT hash, object_key, size FROM blob_chunks WHERE account_id = $1")
            .bind(account.as_i64())
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("hash")?,
                    r.try_get("object_key")?,
                    r.try_get("size")?,
                ))
            })
            .collect()
    }

    /// Whether `key` waits in `blob_trash` (an object being written, or one to delete).
    pub async fn blob_pending(&self, key: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 AS one FROM blob_trash WHERE object_key = $1")
                .bind(key)
                .fetch_optional(&self.reader)
                .await?
                .is_some(),
        )
    }

    /// An account's files with a chunk that is not stored (forgotten as damaged): their ids.
    pub async fn files_missing_chunks(&self, account: AccountId) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT DISTINCT fc.file_id AS file_id FROM file_chunks fc WHERE fc.account_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM blob_chunks bc WHERE bc.account_id = fc.account_id AND bc.hash = fc.hash) \
             ORDER BY fc.file_id",
        )
        .bind(account.as_i64())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("file_id")?))
        .collect()
    }

    /// Objects whose deletion is due, at most `limit`.
    pub async fn due_blobs(&self, now: Timestamp, limit: i64) -> Result<Vec<String>> {
        sqlx::query("SELECT object_key FROM blob_trash WHERE due_at <= $1 ORDER BY due_at LIMIT $2")
            .bind(now.millis())
            .bind(limit)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| Ok(r.try_get("object_key")?))
            .collect()
    }

    /// Forgets objects that were deleted from the blob store.
    pub async fn blobs_deleted(&self, keys: &[String]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for k in keys {
            untrash(&mut tx, k).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// An upload, read inside a transaction (under the account lock).
async fn upload_in(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    upload_id: &str,
) -> Result<Option<UploadRow>> {
    sqlx::query(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE account_id = $1 AND id = $2"
    ))
    .bind(account.as_i64())
    .bind(upload_id)
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(upload_row)
    .transpose()
}

async fn remove_upload_tx(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    upload_id: &str,
    now: Timestamp,
) -> Result<bool> {
    let Some(up) = upload_in(tx, account, upload_id).await? else {
        return Ok(false);
    };
    if up.file_id.is_none() {
        sqlx::query("DELETE FROM upload_parts WHERE account_id = $1 AND upload_id = $2")
            .bind(account.as_i64())
            .bind(upload_id)
            .execute(&mut **tx)
            .await?;
        add_usage(tx, account, UPLOADS_CATEGORY, -up.offset(), 0).await?;
        if let Some(k) = &up.tail_key {
            trash(tx, account, k, now).await?;
        }
    }
    sqlx::query("DELETE FROM uploads WHERE account_id = $1 AND id = $2")
        .bind(account.as_i64())
        .bind(upload_id)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

/// The chunk size parts are numbered by; equal to `mica_blobs::CHUNK_SIZE` (the store does not
/// depend on the blob crate; the files service checks they agree).
pub const CHUNK_BYTES: i64 = 4 * 1024 * 1024;
