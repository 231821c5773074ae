//! The media queue and what it learns about each photo: EXIF time and place, pixel size, and
//! the object keys of its previews.

use mica_core::{AccountId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store, StoreError};

#[derive(Debug, Clone)]
pub struct MediaRow {
    pub account_id: AccountId,
    pub file_id: String,
    /// `pending`, `done`, `failed` or `unsupported`.
    pub status: String,
    pub attempts: i64,
    pub taken_at: Option<Timestamp>,
    /// Sealed `{"latitude":…,"longitude":…}`.
    pub place: Option<Vec<u8>>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub thumb_small: Option<String>,
    pub thumb_large: Option<String>,
    pub error: Option<String>,
}

/// What processing a photo produced.
#[derive(Debug, Clone, Default)]
pub struct MediaDone {
    pub status: String,
    pub taken_at: Option<Timestamp>,
    pub place: Option<Vec<u8>>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub thumb_small: Option<String>,
    pub thumb_large: Option<String>,
    pub error: Option<String>,
}

const COLUMNS: &str = "account_id, file_id, status, attempts, taken_at, place, width, height, thumb_small, thumb_large, error";

fn row(r: &AnyRow) -> Result<MediaRow> {
    let account: i64 = r.try_get("account_id")?;
    Ok(MediaRow {
        account_id: AccountId::from_i64(account)
            .ok_or_else(|| StoreError::Corrupt(format!("account id {account}")))?,
        file_id: r.try_get("file_id")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        taken_at: r.try_get::<Option<i64>, _>("taken_at")?.map(Timestamp),
        place: r.try_get("place")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        thumb_small: r.try_get("thumb_small")?,
        thumb_large: r.try_get("thumb_large")?,
        error: r.try_get("error")?,
    })
}

impl Store {
    /// Queues a file for the media worker (once).
    pub async fn enqueue_media(
        &self,
        account: AccountId,
        file_id: &str,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO media (account_id, file_id, status, lease_until, attempts, created_at) \
             VALUES ($1, $2, 'pending', NULL, 0, $3) ON CONFLICT (account_id, file_id) DO NOTHING",
        )
        .bind(account.as_i64())
        .bind(file_id)
        .bind(now.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Takes the oldest pending file whose lease is free, leasing it until `lease_until`.
    pub async fn claim_media(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Option<MediaRow>> {
        let mut tx = self.writer.begin().await?;
        let found = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM media WHERE status = 'pending' \
             AND (lease_until IS NULL OR lease_until < $1) ORDER BY created_at LIMIT 1"
        ))
        .bind(now.millis())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = found.as_ref().map(row).transpose()? else {
            return Ok(None);
        };
        let taken = sqlx::query(
            "UPDATE media SET lease_until = $3, attempts = attempts + 1 \
             WHERE account_id = $1 AND file_id = $2 AND status = 'pending' \
             AND (lease_until IS NULL OR lease_until < $4)",
        )
        .bind(r.account_id.as_i64())
        .bind(&r.file_id)
        .bind(lease_until.millis())
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((taken.rows_affected() == 1).then_some(r))
    }

    /// Records the outcome. When the file is gone meanwhile (no row), returns `false`: the
    /// caller deletes the previews it wrote.
    pub async fn finish_media(
        &self,
        account: AccountId,
        file_id: &str,
        done: &MediaDone,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE media SET status = $3, lease_until = NULL, taken_at = $4, place = $5, width = $6, \
             height = $7, thumb_small = $8, thumb_large = $9, error = $10 \
             WHERE account_id = $1 AND file_id = $2",
        )
        .bind(account.as_i64())
        .bind(file_id)
        .bind(&done.status)
        .bind(done.taken_at.map(|t| t.millis()))
        .bind(done.place.clone())
        .bind(done.width)
        .bind(done.height)
        .bind(done.thumb_small.clone())
        .bind(done.thumb_large.clone())
        .bind(done.error.clone())
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn media(&self, account: AccountId, file_id: &str) -> Result<Option<MediaRow>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM media WHERE account_id = $1 AND file_id = $2"
        ))
        .bind(account.as_i64())
        .bind(file_id)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(row)
        .transpose()
    }

    /// Every media row of an account (for the gallery timeline).
    pub async fn account_media(&self, account: AccountId) -> Result<Vec<MediaRow>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM media WHERE account_id = $1"
        ))
        .bind(account.as_i64())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(row)
        .collect()
    }

    /// The live items of a collection (for listings that need all of them).
    pub async fn live_items(
        &self,
        account: AccountId,
        collection: &str,
    ) -> Result<Vec<crate::ItemRow>> {
        crate::cloud::live_items(self, account, collection).await
    }
}
