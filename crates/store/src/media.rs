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

/// An album a photo is in: the blind index of its name (what look-ups compare) and the name,
/// sealed (what a listing shows).
#[derive(Debug, Clone)]
pub struct Album {
    pub key: Vec<u8>,
    pub name: Vec<u8>,
}

/// The albums of one item at one version.
#[derive(Debug, Clone)]
pub struct ItemAlbums {
    pub id: String,
    pub version: i64,
    pub albums: Vec<Album>,
}

/// One album of a gallery: its sealed name and how many live photos it holds.
#[derive(Debug, Clone)]
pub struct AlbumRow {
    pub key: Vec<u8>,
    pub name: Vec<u8>,
    pub photos: i64,
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
        // And their albums' rows with them.
        sqlx::query(
            "UPDATE item_albums SET timeline_at = (SELECT i.timeline_at FROM items i \
             WHERE i.account_id = item_albums.account_id AND i.collection_id = item_albums.collection_id \
             AND i.id = item_albums.item_id) \
             WHERE account_id = $1 AND item_id IN (SELECT id FROM items WHERE account_id = $1 AND file_id = $2)",
        )
        .bind(account.as_i64())
        .bind(file_id)
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

    /// Replaces the albums each item is in (blind indexes of their names; none for a deleted
    /// item), each row with the item's place on the timeline: run after the items were placed.
    /// A few multi-row statements for a whole batch, with anonymous placeholders throughout
    /// (see `Store::mark`).
    pub(crate) async fn replace_albums(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        account: AccountId,
        collection: &str,
        items: &[(&str, &[Album])],
    ) -> Result<()> {
        for chunk in items.chunks(100) {
            let sql = format!(
                "DELETE FROM item_albums WHERE account_id = {} AND collection_id = {} \
                 AND item_id IN ({})",
                self.mark(1),
                self.mark(2),
                self.marks(3, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(account.as_i64()).bind(collection);
            for (id, _) in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut **tx).await?;
        }
        let rows: Vec<(&str, &[u8])> = items
            .iter()
            .flat_map(|(id, albums)| albums.iter().map(move |a| (*id, a.key.as_slice())))
            .collect();
        // Each album's name, the first time the gallery has it.
        let mut names: Vec<&Album> = items.iter().flat_map(|(_, a)| a.iter()).collect();
        names.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        names.dedup_by(|a, b| a.key == b.key);
        for chunk in names.chunks(200) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", self.marks(i * 4 + 1, 4)))
                .collect();
            let sql = format!(
                "INSERT INTO albums (account_id, collection_id, album, name) VALUES {} \
                 ON CONFLICT DO NOTHING",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for a in chunk {
                q = q
                    .bind(account.as_i64())
                    .bind(collection)
                    .bind(a.key.clone())
                    .bind(a.name.clone());
            }
            q.execute(&mut **tx).await?;
        }
        // Each row with its item's place on the timeline, read as it is inserted.
        for chunk in rows.chunks(200) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", self.marks(i * 2 + 1, 2)))
                .collect();
            let n = chunk.len() * 2;
            // `CROSS JOIN`: SQLite then reads the values first and looks each item up by its key
            // (as a plain join it may walk the account's items once per value instead).
            let sql = format!(
                "INSERT INTO item_albums (account_id, collection_id, album, item_id, timeline_at) \
                 SELECT i.account_id, i.collection_id, v.column1, i.id, i.timeline_at \
                 FROM (VALUES {}) AS v CROSS JOIN items i WHERE i.account_id = {} \
                 AND i.collection_id = {} AND i.id = v.column2 ON CONFLICT DO NOTHING",
                values.join(", "),
                self.mark(n + 1),
                self.mark(n + 2)
            );
            let mut q = sqlx::query(&sql);
            for (id, album) in chunk {
                q = q.bind(album.to_vec()).bind(*id);
            }
            q.bind(account.as_i64())
                .bind(collection)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// A page of the gallery's timeline: its live items, newest first by the time the device
    /// recorded (the item's `starts_at`) or else the one the media worker read from the file,
    /// undated ones last, ties in id order; after `after` (the last entry of the page before),
    /// at most `limit`; with `album` (an album name's blind index), only that album's items.
    /// Each comes with its file's media row and its time in that order.
    ///
    /// A range of the `items_timeline` index (each item's place is kept in `timeline_at`, see
    /// [`place_on_timeline`]): a page costs its own rows, whatever the gallery's size; so does
    /// an album's, a range of `item_albums_timeline`.
    pub async fn timeline_page(
        &self,
        account: AccountId,
        collection: &str,
        album: Option<&[u8]>,
        after: Option<&TimelineCursor>,
        limit: i64,
    ) -> Result<Vec<TimelineRow>> {
        // `timeline_at <= $3 AND (…)`, not a bare OR, so that the index gives the range. An
        // album's page is a range of `item_albums_timeline` in the same order (its rows carry
        // the item's place), joined to the items.
        let (from, key, id) = match album {
            None => ("items i", "i.timeline_at", "i.id"),
            Some(_) => (
                "item_albums a JOIN items i ON i.account_id = a.account_id \
                 AND i.collection_id = a.collection_id AND i.id = a.item_id",
                "a.timeline_at",
                "a.item_id",
            ),
        };
        let (account_col, collection_col) = match album {
            None => ("i.account_id", "i.collection_id"),
            Some(_) => ("a.account_id", "a.collection_id"),
        };
        let mut next = 3;
        let mut filter = String::new();
        if album.is_some() {
            filter.push_str(&format!(
                " AND a.album = ${next} AND i.timeline_at IS NOT NULL"
            ));
            next += 1;
        }
        if after.is_some() {
            filter.push_str(&format!(
                " AND {key} <= ${a} AND ({key} < ${a} OR {id} > ${b})",
                a = next,
                b = next + 1
            ));
            next += 2;
        }
        let sql = format!(
            "SELECT i.id, i.seq, i.modified_at, i.deleted_at, i.size, i.body, i.summary, \
             i.file_id, i.path_key, {key} AS timeline_at, m.account_id, m.status, m.attempts, \
             m.taken_at, m.place, m.width, m.height, m.thumb_small, m.thumb_large, m.error \
             FROM {from} \
             LEFT JOIN media m ON m.account_id = i.account_id AND m.file_id = i.file_id \
             WHERE {account_col} = $1 AND {collection_col} = $2 AND {key} IS NOT NULL{filter} \
             ORDER BY {key} DESC, {id} LIMIT ${next}"
        );
        let mut q = sqlx::query(&sql).bind(account.as_i64()).bind(collection);
        if let Some(album) = album {
            q = q.bind(album.to_vec());
        }
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

    /// The albums that hold at least one live photo, with their sealed names and sizes: one
    /// pass over the gallery's album rows (counted within `item_albums_timeline`), then one
    /// name looked up per album.
    pub async fn album_list(&self, account: AccountId, collection: &str) -> Result<Vec<AlbumRow>> {
        sqlx::query(
            "SELECT g.album, n.name, g.photos FROM \
             (SELECT album, COUNT(*) AS photos FROM item_albums \
              WHERE account_id = $1 AND collection_id = $2 AND timeline_at IS NOT NULL \
              GROUP BY album) g \
             JOIN albums n ON n.account_id = $1 AND n.collection_id = $2 AND n.album = g.album",
        )
        .bind(account.as_i64())
        .bind(collection)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(AlbumRow {
                key: r.try_get("album")?,
                name: r.try_get("name")?,
                photos: r.try_get("photos")?,
            })
        })
        .collect()
    }

    /// Whether the collection's albums are still only in its sealed bodies (a gallery written
    /// before albums were indexed): see [`Store::index_albums`].
    pub async fn albums_unindexed(&self, account: AccountId, collection: &str) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 AS one FROM album_backfill WHERE account_id = $1 AND collection_id = $2",
        )
        .bind(account.as_i64())
        .bind(collection)
        .fetch_optional(&self.reader)
        .await?
        .is_some())
    }

    /// Indexes the albums of items read from their bodies (`items`, in id order, as one page of
    /// the collection), each only if it is still at the version read: a later write indexed it
    /// itself. `done` ends the collection's backfill. Under the account's lock, as every write
    /// of the collection is; a few statements a page, not a few an item.
    pub async fn index_albums(
        &self,
        account: AccountId,
        collection: &str,
        items: &[ItemAlbums],
        done: bool,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        crate::cloud::lock_account(&mut tx, account, 0).await?;
        if let (Some(first), Some(last)) = (items.first(), items.last()) {
            let current: std::collections::HashMap<String, i64> = sqlx::query(
                "SELECT id, seq FROM items WHERE account_id = $1 AND collection_id = $2 \
                 AND id >= $3 AND id <= $4 AND deleted_at IS NULL",
            )
            .bind(account.as_i64())
            .bind(collection)
            .bind(&first.id)
            .bind(&last.id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("seq")?)))
            .collect::<Result<_>>()?;
            let still: Vec<(&str, &[Album])> = items
                .iter()
                .filter(|it| current.get(&it.id) == Some(&it.version))
                .map(|it| (it.id.as_str(), it.albums.as_slice()))
                .collect();
            self.replace_albums(&mut tx, account, collection, &still)
                .await?;
        }
        if done {
            sqlx::query("DELETE FROM album_backfill WHERE account_id = $1 AND collection_id = $2")
                .bind(account.as_i64())
                .bind(collection)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
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
