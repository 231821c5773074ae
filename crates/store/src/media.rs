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

/// Where a timeline page starts: after the entry with this time (none: undated) and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineCursor {
    pub at: Option<i64>,
    pub id: String,
}

/// A gallery item on the timeline, with its file's media row and the time that places it.
#[derive(Debug, Clone)]
pub struct TimelineRow {
    pub item: crate::ItemRow,
    pub media: Option<MediaRow>,
    pub at: Option<i64>,
}

/// The timeline place of an item with no time (the smallest BIGINT: after every dated one).
const UNDATED: i64 = i64::MIN;

/// Gives the collection's live items written at `from_seq` or later their place on the gallery
/// timeline (`items.timeline_at`): the time the device recorded, else the one the media worker
/// read from the file, else [`UNDATED`]. Run in the transaction that wrote them, under the
/// account's lock, as [`Store::finish_media`] is: whichever of the two commits second sees the
/// other's row, so no photo keeps a stale place.
pub(crate) async fn place_on_timeline(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    account: AccountId,
    collection: &str,
    from_seq: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE items SET timeline_at = COALESCE(starts_at, \
         (SELECT m.taken_at FROM media m WHERE m.account_id = items.account_id AND m.file_id = items.file_id), $4) \
         WHERE account_id = $1 AND collection_id = $2 AND seq >= $3 AND deleted_at IS NULL",
    )
    .bind(account.as_i64())
    .bind(collection)
    .bind(from_seq)
    .bind(UNDATED)
    .execute(&mut **tx)
    .await?;
    Ok(())
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

    /// Records the outcome of a pending row, and keeps the previews it names (written under an
    /// intent, [`Store::blob_intent`], still running at `now`). When the row is gone meanwhile
    /// (the file with it), another worker finished it first (its lease ran out), or a
    /// preview's intent lapsed, returns `false` and records nothing: the caller discards the previews it wrote, and a crash before that leaves them
    /// to their intent.
    pub async fn finish_media(
        &self,
        account: AccountId,
        file_id: &str,
        done: &MediaDone,
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        // Under the account's lock, like every change to what the collector looks at: on
        // PostgreSQL the collector could otherwise read the row before this commits, delete it
        // after, and leave the previews with neither a row nor an intent.
        crate::cloud::lock_account(&mut tx, account, 0).await?;
        let r = sqlx::query(
            "UPDATE media SET status = $3, lease_until = NULL, taken_at = $4, place = $5, width = $6, \
             height = $7, thumb_small = $8, thumb_large = $9, error = $10 \
             WHERE account_id = $1 AND file_id = $2 AND status = 'pending'",
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
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        // The photos showing this file move to the time read from it (unless the device said).
        sqlx::query(
            "UPDATE items SET timeline_at = COALESCE(starts_at, $3, $4) \
             WHERE account_id = $1 AND file_id = $2 AND timeline_at IS NOT NULL",
        )
        .bind(account.as_i64())
        .bind(file_id)
        .bind(done.taken_at.map(|t| t.millis()))
        .bind(UNDATED)
        .execute(&mut *tx)
        .await?;
        for key in [&done.thumb_small, &done.thumb_large].into_iter().flatten() {
            if !crate::files::claim(&mut tx, account, key, now).await? {
                // Written too long ago to be sure it is still there: made again later.
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
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

    /// A page of the gallery's timeline: its live items, newest first by the time the device
    /// recorded (the item's `starts_at`) or else the one the media worker read from the file,
    /// undated ones last, ties in id order; after `after` (the last entry of the page before),
    /// at most `limit`. Each comes with its file's media row and its time in that order.
    ///
    /// A range of the `items_timeline` index (each item's place is kept in `timeline_at`, see
    /// [`place_on_timeline`]): a page costs its own rows, whatever the gallery's size.
    pub async fn timeline_page(
        &self,
        account: AccountId,
        collection: &str,
        after: Option<&TimelineCursor>,
        limit: i64,
    ) -> Result<Vec<TimelineRow>> {
        // `timeline_at <= $3 AND (…)`, not a bare OR, so that the index gives the range.
        let from = if after.is_some() {
            "AND i.timeline_at <= $3 AND (i.timeline_at < $3 OR i.id > $4)"
        } else {
            ""
        };
        let limit_at = if after.is_some() { 5 } else { 3 };
        let sql = format!(
            "SELECT i.id, i.seq, i.modified_at, i.deleted_at, i.size, i.body, i.summary, \
             i.file_id, i.path_key, i.timeline_at, m.account_id, m.status, m.attempts, \
             m.taken_at, m.place, m.width, m.height, m.thumb_small, m.thumb_large, m.error \
             FROM items i LEFT JOIN media m ON m.account_id = i.account_id AND m.file_id = i.file_id \
             WHERE i.account_id = $1 AND i.collection_id = $2 AND i.timeline_at IS NOT NULL {from} \
             ORDER BY i.timeline_at DESC, i.id LIMIT ${limit_at}"
        );
        let mut q = sqlx::query(&sql).bind(account.as_i64()).bind(collection);
        if let Some(a) = after {
            q = q.bind(a.at.unwrap_or(UNDATED)).bind(a.id.as_str());
        }
        let rows = q.bind(limit).fetch_all(&self.reader).await?;
        rows.iter()
            .map(|r| {
                let item = crate::cloud::item_from(r, true)?;
                // The media columns keep their names (the item's `file_id` is the media row's).
                let media = match r.try_get::<Option<String>, _>("status")? {
                    None => None,
                    Some(_) => Some(row(r)?),
                };
                let at = Some(r.try_get::<i64, _>("timeline_at")?).filter(|t| *t != UNDATED);
                Ok(TimelineRow { item, media, at })
            })
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
