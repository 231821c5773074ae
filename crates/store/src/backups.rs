//! Device backups (CL-7): a backup row and its parts, each part a file of the account.
//!
//! A backup is written whole in one transaction, under the account's `cloud_accounts` lock like
//! every change to stored bytes, and only when every part's bytes are stored: a part is either a
//! file just uploaded (pending, counted under 'uploads' until now) or content an earlier backup
//! of the account holds, found by its content hash and size. A file counts once in the usage
//! category 'backups' however many backups hold it; a deletion (by its owner, or by the
//! per-device retention in the transaction that adds a newer backup) releases the files no
//! other backup holds, which the collector then removes.

use std::collections::HashMap;

use mica_core::{AccountId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::cloud::{add_usage, lock_account};
use crate::files::UPLOADS_CATEGORY;
use crate::{Result, Store};

/// Usage category of the files backups hold (each file once).
pub const BACKUPS_CATEGORY: &str = "backups";

#[derive(Debug, Clone)]
pub struct BackupRow {
    pub id: String,
    pub device_id: String,
    pub device_name: String,
    pub device_model: String,
    pub created_at: Timestamp,
    pub size: i64,
    pub added: i64,
    pub part_count: i64,
    pub verify_due_at: Option<Timestamp>,
    pub verified_at: Option<Timestamp>,
    pub damage: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BackupPartRow {
    pub name: String,
    pub kind: String,
    pub file_id: String,
    pub size: i64,
    pub content_hash: String,
}

#[derive(Debug, Clone)]
pub struct NewBackup<'a> {
    pub id: &'a str,
    pub device_id: &'a str,
    pub device_name: &'a str,
    pub device_model: &'a str,
    pub now: Timestamp,
    /// When the first verification is due.
    pub verify_due: Timestamp,
    /// How many backups of the device to keep, this one included; older ones are deleted in the
    /// same transaction.
    pub keep: usize,
}

#[derive(Debug, Clone)]
pub struct NewBackupPart<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub size: i64,
    pub content_hash: &'a str,
    /// The file just uploaded for this part; `None` when an earlier backup holds its content.
    pub file_id: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub enum BackupOutcome {
    /// Written; `removed` are the device's older backups the retention deleted.
    Created {
        backup: BackupRow,
        removed: Vec<String>,
    },
    /// No file for these parts, and no earlier backup holds their content: upload them.
    Missing(Vec<String>),
    /// The file named for this part is not a new upload of this account with the part's size
    /// and content.
    NotUsable(String),
}

const BACKUP_COLUMNS: &str = "id, device_id, device_name, device_model, created_at, size, added, \
     part_count, verify_due_at, verified_at, damage";

fn backup_row(r: &AnyRow) -> Result<BackupRow> {
    Ok(BackupRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        device_name: r.try_get("device_name")?,
        device_model: r.try_get("device_model")?,
        created_at: Timestamp(r.try_get("created_at")?),
        size: r.try_get("size")?,
        added: r.try_get("added")?,
        part_count: r.try_get("part_count")?,
        verify_due_at: r.try_get::<Option<i64>, _>("verify_due_at")?.map(Timestamp),
        verified_at: r.try_get::<Option<i64>, _>("verified_at")?.map(Timestamp),
        damage: r.try_get("damage")?,
    })
}

/// The files of the account's backups holding each of these contents (hash and size), by
/// content; contents no backup holds are absent.
async fn held_contents(
    conn: &mut sqlx::AnyConnection,
    account: AccountId,
    contents: &[(&str, i64)],
) -> Result<HashMap<(String, i64), String>> {
    let mut hashes: Vec<&str> = contents.iter().map(|(h, _)| *h).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let mut found = HashMap::new();
    for chunk in hashes.chunks(200) {
        let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        // Only files whose every chunk is stored: a chunk a verification found damaged is
        // forgotten, and the content must be uploaded again (which stores the chunk anew and
        // so mends every file made of it).
        let sql = format!(
            "SELECT p.content_hash AS content_hash, p.size AS size, p.file_id AS file_id \
             FROM backup_parts p WHERE p.account_id = $1 AND p.content_hash IN ({}) \
             AND NOT EXISTS (SELECT 1 FROM file_chunks fc WHERE fc.account_id = p.account_id \
               AND fc.file_id = p.file_id AND NOT EXISTS (SELECT 1 FROM blob_chunks bc \
                 WHERE bc.account_id = fc.account_id AND bc.hash = fc.hash))",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(account.as_i64());
        for h in chunk {
            q = q.bind(*h);
        }
        for r in q.fetch_all(&mut *conn).await? {
            found.insert(
                (r.try_get("content_hash")?, r.try_get("size")?),
                r.try_get("file_id")?,
            );
        }
    }
    Ok(found)
}

async fn delete_backup_tx(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    id: &str,
) -> Result<bool> {
    let files: Vec<String> = sqlx::query(
        "SELECT DISTINCT file_id FROM backup_parts WHERE account_id = $1 AND backup_id = $2",
    )
    .bind(account.as_i64())
    .bind(id)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| r.try_get("file_id"))
    .collect::<std::result::Result<_, _>>()?;
    sqlx::query("DELETE FROM backup_parts WHERE account_id = $1 AND backup_id = $2")
        .bind(account.as_i64())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let n = sqlx::query("DELETE FROM backups WHERE account_id = $1 AND id = $2")
        .bind(account.as_i64())
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Ok(false);
    }
    // The files no other backup holds stop counting; the collector removes them.
    let mut freed = 0i64;
    for f in &files {
        let r = sqlx::query(
            "SELECT size FROM files f WHERE f.account_id = $1 AND f.id = $2 \
             AND NOT EXISTS (SELECT 1 FROM backup_parts p WHERE p.account_id = f.account_id AND p.file_id = f.id)",
        )
        .bind(account.as_i64())
        .bind(f)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(r) = r {
            freed += r.try_get::<i64, _>("size")?;
        }
    }
    add_usage(tx, account, BACKUPS_CATEGORY, -freed, -1).await?;
    Ok(true)
}

impl Store {
    /// Which of these contents (hash, size) the account's backups already hold.
    pub async fn backup_contents_held(
        &self,
        account: AccountId,
        contents: &[(&str, i64)],
    ) -> Result<Vec<bool>> {
        let mut conn = self.reader.acquire().await?;
        let held = held_contents(&mut conn, account, contents).await?;
        Ok(contents
            .iter()
            .map(|(h, s)| held.contains_key(&((*h).to_owned(), *s)))
            .collect())
    }

    /// Writes a backup and its parts in one transaction, then deletes the device's backups
    /// beyond `keep`, newest kept.
    pub async fn create_backup(
        &self,
        account: AccountId,
        b: &NewBackup<'_>,
        parts: &[NewBackupPart<'_>],
    ) -> Result<BackupOutcome> {
        let mut tx = self.writer.begin().await?;
        lock_account(&mut tx, account, 0).await?;
        let wanted: Vec<(&str, i64)> = parts
            .iter()
            .filter(|p| p.file_id.is_none())
            .map(|p| (p.content_hash, p.size))
            .collect();
        let held = held_contents(&mut tx, account, &wanted).await?;
        // Each part's file, and the new uploads among them (pending until now).
        let mut files: Vec<String> = Vec::with_capacity(parts.len());
        let mut missing = Vec::new();
        let mut taken: HashMap<String, i64> = HashMap::new();
        for p in parts {
            match p.file_id {
                None => match held.get(&(p.content_hash.to_owned(), p.size)) {
                    Some(f) => files.push(f.clone()),
                    None => {
                        missing.push(p.name.to_owned());
                        files.push(String::new());
                    }
                },
                Some(f) => {
                    let r = sqlx::query(
                        "SELECT size, content_hash, pending_since, \
                           (SELECT COUNT(*) FROM backup_parts p WHERE p.account_id = f.account_id AND p.file_id = f.id) AS held \
                         FROM files f WHERE f.account_id = $1 AND f.id = $2",
                    )
                    .bind(account.as_i64())
                    .bind(f)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(r) = r else {
                        return Ok(BackupOutcome::NotUsable(p.name.to_owned()));
                    };
                    let size: i64 = r.try_get("size")?;
                    let hash: String = r.try_get("content_hash")?;
                    let pending = r.try_get::<Option<i64>, _>("pending_since")?.is_some();
                    let held: i64 = r.try_get("held")?;
                    if size != p.size || hash != p.content_hash || !(pending || held > 0) {
                        return Ok(BackupOutcome::NotUsable(p.name.to_owned()));
                    }
                    if pending {
                        taken.insert(f.to_owned(), size);
                    }
                    files.push(f.to_owned());
                }
            }
        }
        if !missing.is_empty() {
            return Ok(BackupOutcome::Missing(missing));
        }
        let added: i64 = taken.values().sum();
        let size: i64 = parts.iter().map(|p| p.size).sum();
        for f in taken.keys() {
            sqlx::query("UPDATE files SET pending_since = NULL WHERE account_id = $1 AND id = $2")
                .bind(account.as_i64())
                .bind(f)
                .execute(&mut *tx)
                .await?;
        }
        let n_taken = i64::try_from(taken.len()).unwrap_or(0);
        add_usage(&mut tx, account, UPLOADS_CATEGORY, -added, -n_taken).await?;
        add_usage(&mut tx, account, BACKUPS_CATEGORY, added, 1).await?;
        let part_count = i64::try_from(parts.len()).unwrap_or(i64::MAX);
        // A device's backups are ordered by time: a later one is never stamped before (or at
        // the same millisecond as) the one before it, whatever the clock did.
        let last: Option<i64> = sqlx::query(
            "SELECT MAX(created_at) AS last FROM backups WHERE account_id = $1 AND device_id = $2",
        )
        .bind(account.as_i64())
        .bind(b.device_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("last")?;
        let created_at = Timestamp(last.map_or(b.now.millis(), |l| b.now.millis().max(l + 1)));
        sqlx::query(
            "INSERT INTO backups (account_id, id, device_id, device_name, device_model, created_at, \
               size, added, part_count, verify_due_at, verify_full, verify_lease, verified_at, damage) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, NULL, NULL, NULL)",
        )
        .bind(account.as_i64())
        .bind(b.id)
        .bind(b.device_id)
        .bind(b.device_name)
        .bind(b.device_model)
        .bind(created_at.millis())
        .bind(size)
        .bind(added)
        .bind(part_count)
        .bind(b.verify_due.millis())
        .execute(&mut *tx)
        .await?;
        let rows: Vec<(&NewBackupPart<'_>, &String)> = parts.iter().zip(&files).collect();
        for chunk in rows.chunks(100) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let k = 3 + i * 5;
                    format!(
                        "($1, $2, ${}, ${}, ${}, ${}, ${})",
                        k,
                        k + 1,
                        k + 2,
                        k + 3,
                        k + 4
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO backup_parts (account_id, backup_id, name, kind, file_id, size, content_hash) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(account.as_i64()).bind(b.id);
            for (p, f) in chunk {
                q = q
                    .bind(p.name)
                    .bind(p.kind)
                    .bind(f.as_str())
                    .bind(p.size)
                    .bind(p.content_hash);
            }
            q.execute(&mut *tx).await?;
        }
        // The device's retention: newest first, the ones past `keep` go — except the newest
        // backup known to be intact while none of the kept ones is known to be: new backups
        // that turn out damaged never push out the last good one.
        let mut rows: Vec<(String, bool)> = Vec::new();
        for r in sqlx::query(
            "SELECT id, verified_at, damage FROM backups WHERE account_id = $1 AND device_id = $2 \
             ORDER BY created_at DESC, id DESC",
        )
        .bind(account.as_i64())
        .bind(b.device_id)
        .fetch_all(&mut *tx)
        .await?
        {
            let good = r.try_get::<Option<i64>, _>("verified_at")?.is_some()
                && r.try_get::<Option<String>, _>("damage")?.is_none();
            rows.push((r.try_get("id")?, good));
        }
        let keep = b.keep.max(1);
        let mut good_kept = rows.iter().take(keep).any(|(_, good)| *good);
        let mut removed = Vec::new();
        for (id, good) in rows.into_iter().skip(keep) {
            if good && !good_kept {
                good_kept = true;
                continue;
            }
            if id != b.id && delete_backup_tx(&mut tx, account, &id).await? {
                removed.push(id);
            }
        }
        tx.commit().await?;
        Ok(BackupOutcome::Created {
            backup: BackupRow {
                id: b.id.to_owned(),
                device_id: b.device_id.to_owned(),
                device_name: b.device_name.to_owned(),
                device_model: b.device_model.to_owned(),
                created_at,
                size,
                added,
                part_count,
                verify_due_at: Some(b.verify_due),
                verified_at: None,
                damage: None,
            },
            removed,
        })
    }

    /// The account's backups, newest first.
    pub async fn backups(&self, account: AccountId) -> Result<Vec<BackupRow>> {
        sqlx::query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE account_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(account.as_i64())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(backup_row)
        .collect()
    }

    pub async fn backup(&self, account: AccountId, id: &str) -> Result<Option<BackupRow>> {
        sqlx::query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE account_id = $1 AND id = $2"
        ))
        .bind(account.as_i64())
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(backup_row)
        .transpose()
    }

    /// A backup's parts, by name.
    pub async fn backup_parts(&self, account: AccountId, id: &str) -> Result<Vec<BackupPartRow>> {
        sqlx::query(
            "SELECT name, kind, file_id, size, content_hash FROM backup_parts \
             WHERE account_id = $1 AND backup_id = $2 ORDER BY name",
        )
        .bind(account.as_i64())
        .bind(id)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(BackupPartRow {
                name: r.try_get("name")?,
                kind: r.try_get("kind")?,
                file_id: r.try_get("file_id")?,
                size: r.try_get("size")?,
                content_hash: r.try_get("content_hash")?,
            })
        })
        .collect()
    }

    /// Deletes a backup; the files no other backup holds stop counting. Returns whether there
    /// was one.
    pub async fn delete_backup(&self, account: AccountId, id: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        lock_account(&mut tx, account, 0).await?;
        let found = delete_backup_tx(&mut tx, account, id).await?;
        tx.commit().await?;
        Ok(found)
    }

    /// Makes a backup's verification due now. Returns whether there is such a backup.
    pub async fn request_backup_check(
        &self,
        account: AccountId,
        id: &str,
        now: Timestamp,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE backups SET verify_due_at = $3, verify_full = 1 \
                 WHERE account_id = $1 AND id = $2",
        )
        .bind(account.as_i64())
        .bind(id)
        .bind(now.millis())
        .execute(&self.writer)
        .await?
        .rows_affected()
            == 1)
    }

    /// Claims a backup whose verification is due, until `lease_until` (a conditional update:
    /// two nodes never check the same backup at once). Its next check becomes due when the
    /// claim runs out, so a dead node's check runs again; a request meanwhile makes it due
    /// sooner, and [`Store::finish_backup_check`] keeps that.
    pub async fn claim_backup_check(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Option<(AccountId, String, bool)>> {
        let due = sqlx::query(
            "SELECT account_id, id FROM backups WHERE verify_due_at <= $1 \
             AND (verify_lease IS NULL OR verify_lease <= $1) ORDER BY verify_due_at LIMIT 5",
        )
        .bind(now.millis())
        .fetch_all(&self.reader)
        .await?;
        for r in &due {
            let account: i64 = r.try_get("account_id")?;
            let id: String = r.try_get("id")?;
            // The claim says whether a full check was asked for, as it stands when claimed.
            let won = sqlx::query(
                "UPDATE backups SET verify_lease = $3, verify_due_at = $3 \
                 WHERE account_id = $1 AND id = $2 \
                 AND verify_due_at <= $4 AND (verify_lease IS NULL OR verify_lease <= $4) \
                 RETURNING verify_full",
            )
            .bind(account)
            .bind(&id)
            .bind(lease_until.millis())
            .bind(now.millis())
            .fetch_optional(&self.writer)
            .await?;
            if let (Some(row), Some(account)) = (won, AccountId::from_i64(account)) {
                let full = row.try_get::<i64, _>("verify_full")? != 0;
                return Ok(Some((account, id, full)));
            }
        }
        Ok(None)
    }

    /// Records a verification's result (`damage`: what failed, `None` when every part is
    /// intact) and when the next one is due — sooner if one was asked for while it ran. Only
    /// while the claim `lease` still holds; `false` when it ran out and another node took over.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_backup_check(
        &self,
        account: AccountId,
        id: &str,
        lease: Timestamp,
        damage: Option<&str>,
        now: Timestamp,
        next_due: Timestamp,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE backups SET verified_at = $4, damage = $5, verify_lease = NULL, \
               verify_full = CASE WHEN verify_due_at < $3 THEN verify_full ELSE 0 END, \
               verify_due_at = CASE WHEN verify_due_at < $3 THEN verify_due_at ELSE $6 END \
             WHERE account_id = $1 AND id = $2 AND verify_lease = $3",
        )
        .bind(account.as_i64())
        .bind(id)
        .bind(lease.millis())
        .bind(now.millis())
        .bind(damage)
        .bind(next_due.millis())
        .execute(&self.writer)
        .await?
        .rows_affected()
            == 1)
    }

    /// The files a backup holds that were read back intact after `after` and whose every
    /// chunk is still stored: what a check need not read again. One statement for the backup.
    pub async fn backup_files_fresh(
        &self,
        account: AccountId,
        backup: &str,
        after: Timestamp,
    ) -> Result<std::collections::HashSet<String>> {
        sqlx::query(
            "SELECT f.id AS id FROM files f WHERE f.account_id = $1 AND f.checked_at > $3 \
             AND f.id IN (SELECT file_id FROM backup_parts WHERE account_id = $1 AND backup_id = $2) \
             AND f.size = COALESCE((SELECT SUM(bc.size) FROM file_chunks fc JOIN blob_chunks bc \
                 ON bc.account_id = fc.account_id AND bc.hash = fc.hash \
               WHERE fc.account_id = f.account_id AND fc.file_id = f.id), 0)",
        )
        .bind(account.as_i64())
        .bind(backup)
        .bind(after.millis())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("id")?))
        .collect()
    }

    /// Records that these files' bytes were read back intact, in one transaction.
    pub async fn files_checked(
        &self,
        account: AccountId,
        files: &[String],
        at: Timestamp,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for chunk in files.chunks(200) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "UPDATE files SET checked_at = $2 WHERE account_id = $1 AND id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(account.as_i64()).bind(at.millis());
            for f in chunk {
                q = q.bind(f);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a chunk whose stored object a verification found missing or changed: files
    /// made of it read as damaged until its content is uploaded again, which stores the
    /// chunk anew. Only if `key` is still the chunk's object (not already replaced).
    pub async fn forget_chunk(
        &self,
        account: AccountId,
        hash: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        lock_account(&mut tx, account, 0).await?;
        let n = sqlx::query(
            "DELETE FROM blob_chunks WHERE account_id = $1 AND hash = $2 AND object_key = $3",
        )
        .bind(account.as_i64())
        .bind(hash)
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            crate::files::trash(&mut tx, account, key, now).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }
}
