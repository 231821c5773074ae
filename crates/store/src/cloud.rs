//! The sync engine's storage: collections, items and their change feed, the recycle bin, usage
//! against the quota, and applied batches.
//!
//! Every write begins by locking the account's `cloud_accounts` row while taking sequence numbers
//! from it. That one lock serialises an account's writers on both engines (SQLite has one writer
//! anyway), so changes commit in sequence order — a reader that pages by sequence, bounded by the
//! committed sequence it read first, can neither skip nor repeat a change — and the quota check
//! and the usage update cannot race another writer.

use mica_core::{AccountId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{Result, Store, StoreError};

/// Usage category of what sits in the recycle bin.
pub const BIN_CATEGORY: &str = "recycle_bin";

#[derive(Debug, Clone)]
pub struct CollectionRow {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub created_at: Timestamp,
    pub purged_seq: i64,
}

/// A page of a collection's changes, and the collection's purge mark as it stood after the
/// page was read (a token below it may have missed purged deletions).
#[derive(Debug, Clone)]
pub struct Changes {
    pub rows: Vec<ItemRow>,
    pub purged_seq: i64,
}

/// An item (or its tombstone) as stored.
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub id: String,
    pub seq: i64,
    pub modified_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
    pub size: i64,
    pub body: Option<Vec<u8>>,
    pub summary: Option<Vec<u8>>,
    /// The file whose bytes the item stands for (gallery, recordings, drive).
    pub file_id: Option<String>,
    /// A drive entry's place: `<parent>/<name>`.
    pub path_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    Put,
    Delete,
}

/// One write of a batch, validated and sealed by the domain.
#[derive(Debug, Clone)]
pub struct ItemWrite {
    pub id: String,
    pub op: WriteOp,
    /// The version the client last saw; `None` for a create.
    pub base: Option<i64>,
    pub body: Option<Vec<u8>>,
    pub summary: Option<Vec<u8>>,
    /// Plaintext bytes, what the quota counts.
    pub size: i64,
    pub uid: Option<String>,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    /// The file the item references; `size` includes the file's bytes.
    pub file_id: Option<String>,
    /// A drive entry's place, `<parent>/<name>`: unique among the collection's live items.
    pub path_key: Option<String>,
    /// A gallery item's albums.
    pub albums: Vec<crate::media::Album>,
}

/// How the collection's category behaves.
#[derive(Debug, Clone, Copy)]
pub struct CategoryRules {
    /// Records merge by id and never conflict (messages, call history, browser history).
    pub append_only: bool,
    /// Deleted items go to the recycle bin.
    pub recyclable: bool,
    /// Items stand for photos and videos: the file of an applied put is queued for the media
    /// worker in the batch's own transaction (so no committed photo is left without previews).
    pub media: bool,
    /// Items form a tree by their `path_key` (the drive): the batch's end state is checked in
    /// its own transaction, after the account lock, so no two batches can together leave an
    /// entry without its folder, inside itself, or a deleted folder with live entries.
    pub tree: bool,
}

/// How deep a tree's folders may nest.
pub const MAX_TREE_DEPTH: usize = 64;

/// What a batch would break in a tree ([`CategoryRules::tree`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeProblem {
    /// The entry's folder is not a live entry (never was, or the batch or another deleted it).
    NoFolder(String),
    /// The entry's folder is a file.
    NotAFolder(String),
    /// The entry would end up inside itself.
    Loop,
    /// Folders would nest deeper than [`MAX_TREE_DEPTH`].
    TooDeep,
    /// The entry stops being a live folder (deleted, or now a file) while entries are still in
    /// it: the one named.
    NotEmpty(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    Applied,
    Conflict,
    /// Nothing to do: deleting what is already deleted.
    Unchanged,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OpResult {
    pub id: String,
    pub status: OpStatus,
    /// The item's version after the batch (`None`: it does not exist).
    pub version: Option<i64>,
    pub deleted: bool,
    /// For a conflict: the server's current item.
    #[serde(skip)]
    pub current: Option<ItemRow>,
}

#[derive(Debug)]
pub enum BatchOutcome {
    Applied {
        results: Vec<OpResult>,
        /// Whether anything changed (and devices should be told).
        changed: bool,
    },
    /// The idempotency key was seen: the first run's results.
    Replayed(Vec<OpResult>),
    /// The idempotency key was used for a different batch.
    KeyReused,
    QuotaExceeded {
        used: i64,
        quota: i64,
        needed: i64,
    },
    /// An item references a file the account does not have (any more).
    MissingFile(String),
    /// The batch would break the tree at the write with this id; nothing was written.
    TreeRefused {
        id: String,
        problem: TreeProblem,
    },
    /// A write conflicted in a batch that is all or nothing; nothing was written.
    Conflicted(Vec<OpResult>),
}

/// The account's cloud settings and totals.
#[derive(Debug, Clone)]
pub struct CloudAccount {
    pub seq: i64,
    pub used_bytes: i64,
    pub plan: String,
    /// The operator's quota for the account (`None`: the server's default).
    pub quota_bytes: Option<i64>,
    /// The quota of the storage plan the account bought, while it lasts.
    pub plan_quota_bytes: Option<i64>,
}

impl CloudAccount {
    /// The account's quota: the operator's (or the server's default), or its plan's when that
    /// is larger.
    pub fn quota(&self, default_quota: i64) -> i64 {
        self.quota_bytes
            .unwrap_or(default_quota)
            .max(self.plan_quota_bytes.unwrap_or(0))
    }
}

/// The account's quota in SQL, `$n` being the server's default (see [`CloudAccount::quota`]).
fn quota_sql(default_param: &str) -> String {
    format!(
        "(CASE WHEN COALESCE(plan_quota_bytes, 0) > COALESCE(quota_bytes, {d}) \
         THEN plan_quota_bytes ELSE COALESCE(quota_bytes, {d}) END)",
        d = default_param
    )
}

#[derive(Debug, Clone)]
pub struct BinRow {
    pub id: String,
    pub collection_id: String,
    pub item_id: String,
    pub kind: String,
    pub summary: Option<Vec<u8>>,
    pub size: i64,
    pub deleted_at: Timestamp,
}

#[derive(Debug)]
pub enum RestoreOutcome {
    Restored {
        collection_id: String,
        item_id: String,
        version: i64,
        /// When it had been deleted (what was deleted with it shares the moment).
        deleted_at: Timestamp,
    },
    NotFound,
    /// A live item has the same id again.
    Occupied,
}

/// A disagreement found by [`Store::check_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageMismatch {
    pub account: i64,
    pub category: String,
    pub recorded: i64,
    pub actual: i64,
}

/// The live items of a collection.
pub(crate) async fn live_items(
    store: &Store,
    account: AccountId,
    collection: &str,
) -> Result<Vec<ItemRow>> {
    sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS} FROM items WHERE account_id = $1 AND collection_id = $2 AND deleted_at IS NULL"
    ))
    .bind(account.as_i64())
    .bind(collection)
    .fetch_all(&store.reader)
    .await?
    .iter()
    .map(item_row)
    .collect()
}

/// The folder part of a drive entry's `<parent>/<name>` key.
fn path_parent(path_key: &str) -> String {
    path_key
        .split_once('/')
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default()
}

fn item_row(r: &AnyRow) -> Result<ItemRow> {
    item_from(r, true)
}

/// An item from a row; without `summary` when the query did not select it.
pub(crate) fn item_from<R>(r: &R, summary: bool) -> Result<ItemRow>
where
    R: Row,
    for<'n> &'n str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ItemRow {
        id: r.try_get("id")?,
        seq: r.try_get("seq")?,
        modified_at: Timestamp(r.try_get("modified_at")?),
        deleted_at: r.try_get::<Option<i64>, _>("deleted_at")?.map(Timestamp),
        size: r.try_get("size")?,
        body: r.try_get("body")?,
        summary: if summary { r.try_get("summary")? } else { None },
        file_id: r.try_get("file_id")?,
        path_key: r.try_get("path_key")?,
    })
}

fn collection_row(r: &AnyRow) -> Result<CollectionRow> {
    Ok(CollectionRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        created_at: Timestamp(r.try_get("created_at")?),
        purged_seq: r.try_get("purged_seq")?,
    })
}

impl Store {
    /// The placeholder of parameter `n` in a statement built for a variable number of rows:
    /// `$n` on PostgreSQL, an anonymous `?` on SQLite. SQLite looks a named parameter up by a
    /// linear scan of the statement's names, once per parameter as sqlx binds them — quadratic
    /// in a statement of hundreds; anonymous ones are bound in order and have no name to find.
    /// Such a statement must use these for every parameter, in order, each once.
    pub(crate) fn mark(&self, n: usize) -> String {
        self.marks(n, 1)
    }

    /// `count` placeholders from parameter `first` on, comma-separated (see [`Store::mark`]).
    pub(crate) fn marks(&self, first: usize, count: usize) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(count * 6);
        for n in first..first + count {
            if n > first {
                out.push_str(", ");
            }
            match self.backend {
                crate::Backend::Postgres => {
                    let _ = write!(out, "${n}");
                }
                crate::Backend::Sqlite => out.push('?'),
            }
        }
        out
    }

    /// Ids per look-up and rows per insert in a sync batch. On SQLite, with anonymous
    /// parameters, the fewer statements the better (each is a round trip to the connection's
    /// thread): a batch of 500 is one look-up and five inserts, and at most 100 insert shapes
    /// compete for the statement cache. PostgreSQL keeps its statements short.
    fn batch_sizes(&self) -> (usize, usize) {
        match self.backend {
            crate::Backend::Sqlite => (500, 100),
            crate::Backend::Postgres => (100, 10),
        }
    }
}

const ITEM_COLUMNS: &str =
    "id, seq, modified_at, deleted_at, size, body, summary, file_id, path_key";

/// Locks the account's cloud row (creating it) and takes `n` sequence numbers: returns the row
/// with `seq` the last number taken.
pub(crate) async fn lock_account(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    n: i64,
) -> Result<CloudAccount> {
    sqlx::query(
        "INSERT INTO cloud_accounts (account_id, seq, used_bytes, plan, quota_bytes) \
         VALUES ($1, 0, 0, 'free', NULL) ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(account.as_i64())
    .execute(&mut **tx)
    .await?;
    let r = sqlx::query(
        "UPDATE cloud_accounts SET seq = seq + $2 WHERE account_id = $1 \
         RETURNING seq, used_bytes, plan, quota_bytes, plan_quota_bytes",
    )
    .bind(account.as_i64())
    .bind(n)
    .fetch_one(&mut **tx)
    .await?;
    Ok(CloudAccount {
        seq: r.try_get("seq")?,
        used_bytes: r.try_get("used_bytes")?,
        plan: r.try_get("plan")?,
        quota_bytes: r.try_get("quota_bytes")?,
        plan_quota_bytes: r.try_get("plan_quota_bytes")?,
    })
}

/// Adds to a usage category and to the account's total.
pub(crate) async fn add_usage(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    category: &str,
    bytes: i64,
    items: i64,
) -> Result<()> {
    if bytes == 0 && items == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO cloud_usage (account_id, category, bytes, items) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (account_id, category) DO UPDATE SET bytes = cloud_usage.bytes + excluded.bytes, \
         items = cloud_usage.items + excluded.items",
    )
    .bind(account.as_i64())
    .bind(category)
    .bind(bytes)
    .bind(items)
    .execute(&mut **tx)
    .await?;
    if bytes != 0 {
        sqlx::query("UPDATE cloud_accounts SET used_bytes = used_bytes + $2 WHERE account_id = $1")
            .bind(account.as_i64())
            .bind(bytes)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Store {
    /// The collection, created with `kind` and `name` when it does not exist yet.
    pub async fn ensure_collection(
        &self,
        account: AccountId,
        id: &str,
        kind: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<CollectionRow> {
        if let Some(c) = self.collection(account, id).await? {
            return Ok(c);
        }
        sqlx::query(
            "INSERT INTO collections (account_id, id, kind, name, created_at, purged_seq) \
             VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (account_id, id) DO NOTHING",
        )
        .bind(account.as_i64())
        .bind(id)
        .bind(kind)
        .bind(name)
        .bind(now.millis())
        .execute(&self.writer)
        .await?;
        self.collection(account, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("collection {id} vanished")))
    }

    /// Creates a collection unless it exists (then the existing one) or the account already
    /// has `max` collections (then `None`). The account's row is locked first, so accounts'
    /// concurrent creations cannot pass the cap together.
    pub async fn create_collection(
        &self,
        account: AccountId,
        id: &str,
        kind: &str,
        name: &str,
        now: Timestamp,
        max: i64,
    ) -> Result<Option<CollectionRow>> {
        let mut tx = self.writer.begin().await?;
        crate::accounts::lock_account_row(&mut tx, account).await?;
        sqlx::query(
            "INSERT INTO collections (account_id, id, kind, name, created_at, purged_seq) \
             SELECT $1, $2, $3, $4, $5, 0 \
             WHERE (SELECT COUNT(*) FROM collections WHERE account_id = $1) < $6 \
             ON CONFLICT (account_id, id) DO NOTHING",
        )
        .bind(account.as_i64())
        .bind(id)
        .bind(kind)
        .bind(name)
        .bind(now.millis())
        .bind(max)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT id, kind, name, created_at, purged_seq FROM collections \
             WHERE account_id = $1 AND id = $2",
        )
        .bind(account.as_i64())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(collection_row)
        .transpose()?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn collection(&self, account: AccountId, id: &str) -> Result<Option<CollectionRow>> {
        sqlx::query(
            "SELECT id, kind, name, created_at, purged_seq FROM collections WHERE account_id = $1 AND id = $2",
        )
        .bind(account.as_i64())
        .bind(id)
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(collection_row)
        .transpose()
    }

    pub async fn collections(&self, account: AccountId) -> Result<Vec<CollectionRow>> {
        sqlx::query(
            "SELECT id, kind, name, created_at, purged_seq FROM collections WHERE account_id = $1 ORDER BY id",
        )
        .bind(account.as_i64())
        .fetch_all(&self.writer)
        .await?
        .iter()
        .map(collection_row)
        .collect()
    }

    /// The account's cloud row (defaults before its first write).
    /// Claims up to `limit` accounts whose usage reached `percent` of their quota
    /// (`default_quota` when they have none of their own) and whose owner was not told of that
    /// level or a higher one: `(account, used, quota)`. One statement, so nodes never tell
    /// twice.
    pub async fn claim_storage_notices(
        &self,
        percent: i64,
        default_quota: i64,
        limit: i64,
    ) -> Result<Vec<(AccountId, i64, i64)>> {
        let quota = quota_sql("$2");
        sqlx::query(&format!(
            // The level is checked again outside the subquery: PostgreSQL re-evaluates only
            // the outer conditions on a row another node's maintenance claimed meanwhile.
            "UPDATE cloud_accounts SET storage_notice = $1 WHERE account_id IN \
             (SELECT account_id FROM cloud_accounts WHERE storage_notice < $1 \
             AND used_bytes * 100 >= {quota} * $1 LIMIT $3) \
             AND storage_notice < $1 \
             RETURNING account_id, used_bytes, {quota} AS quota",
        ))
        .bind(percent)
        .bind(default_quota)
        .bind(limit)
        .fetch_all(&self.writer)
        .await?
        .iter()
        .map(|r| {
            Ok((
                AccountId::from_i64(r.try_get("account_id")?)
                    .ok_or_else(|| StoreError::Corrupt("an account id out of range".into()))?,
                r.try_get("used_bytes")?,
                r.try_get("quota")?,
            ))
        })
        .collect()
    }

    /// Forgets the storage level owners were told of once their usage is below `percent` of
    /// their quota again (so filling up again is news again).
    pub async fn reset_storage_notices(&self, default_quota: i64, percent: i64) -> Result<u64> {
        Ok(sqlx::query(&format!(
            "UPDATE cloud_accounts SET storage_notice = 0 WHERE storage_notice > 0 \
             AND used_bytes * 100 < {} * $2",
            quota_sql("$1")
        ))
        .bind(default_quota)
        .bind(percent)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    pub async fn cloud_account(&self, account: AccountId) -> Result<CloudAccount> {
        let r = sqlx::query(
            "SELECT seq, used_bytes, plan, quota_bytes, plan_quota_bytes FROM cloud_accounts \
             WHERE account_id = $1",
        )
        .bind(account.as_i64())
        .fetch_optional(&self.writer)
        .await?;
        Ok(match r {
            Some(r) => CloudAccount {
                seq: r.try_get("seq")?,
                used_bytes: r.try_get("used_bytes")?,
                plan: r.try_get("plan")?,
                quota_bytes: r.try_get("quota_bytes")?,
                plan_quota_bytes: r.try_get("plan_quota_bytes")?,
            },
            None => CloudAccount {
                seq: 0,
                used_bytes: 0,
                plan: "free".into(),
                quota_bytes: None,
                plan_quota_bytes: None,
            },
        })
    }

    /// Sets the account's plan (what the commerce issue will drive) and, optionally, its own quota.
    pub async fn set_cloud_plan(
        &self,
        account: AccountId,
        plan: &str,
        quota_bytes: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        lock_account(&mut tx, account, 0).await?;
        sqlx::query("UPDATE cloud_accounts SET plan = $2, quota_bytes = $3 WHERE account_id = $1")
            .bind(account.as_i64())
            .bind(plan)
            .bind(quota_bytes)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Usage per category: `(category, bytes, items)`.
    pub async fn cloud_usage(&self, account: AccountId) -> Result<Vec<(String, i64, i64)>> {
        sqlx::query(
            "SELECT category, bytes, items FROM cloud_usage WHERE account_id = $1 ORDER BY category",
        )
        .bind(account.as_i64())
        .fetch_all(&self.writer)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("category")?, r.try_get("bytes")?, r.try_get("items")?)))
        .collect()
    }

    /// Applies a batch to one collection in one transaction. `quota` is the server default,
    /// used unless the account has its own. A conflicting write is reported and the others
    /// applied, unless the batch is `whole`: then a conflict anywhere writes nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_batch(
        &self,
        account: AccountId,
        collection: &CollectionRow,
        rules: CategoryRules,
        ops: &[ItemWrite],
        idempotency: Option<(&str, &[u8])>,
        default_quota: i64,
        now: Timestamp,
        whole: bool,
    ) -> Result<BatchOutcome> {
        let mut tx = self.writer.begin().await?;
        let n = i64::try_from(ops.len()).unwrap_or(i64::MAX);
        let acct = lock_account(&mut tx, account, n).await?;
        if let Some((key, hash)) = idempotency {
            let seen = sqlx::query(
                "SELECT request_hash, results FROM sync_batches WHERE account_id = $1 AND key = $2",
            )
            .bind(account.as_i64())
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = seen {
                let stored: Vec<u8> = r.try_get("request_hash")?;
                if stored != hash {
                    return Ok(BatchOutcome::KeyReused);
                }
                let results: String = r.try_get("results")?;
                let results = serde_json::from_str(&results)
                    .map_err(|e| StoreError::Corrupt(format!("batch results: {e}")))?;
                return Ok(BatchOutcome::Replayed(results));
            }
        }

        // The current state of every item the batch touches.
        let mut current = std::collections::HashMap::with_capacity(ops.len());
        let (lookup_ids, put_rows) = self.batch_sizes();
        for chunk in ops.chunks(lookup_ids) {
            let sql = format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE account_id = {} AND collection_id = {} \
                 AND id IN ({})",
                self.mark(1),
                self.mark(2),
                self.marks(3, chunk.len())
            );
            let mut q = sqlx::query(&sql)
                .bind(account.as_i64())
                .bind(&collection.id);
            for op in chunk {
                q = q.bind(&op.id);
            }
            for r in q.fetch_all(&mut *tx).await? {
                let row = item_row(&r)?;
                current.insert(row.id.clone(), row);
            }
        }

        // Decide every op, then check the quota before writing anything.
        let first_seq = acct.seq - n + 1;
        let mut results = Vec::with_capacity(ops.len());
        let mut plan: Vec<(&ItemWrite, i64, Option<ItemRow>)> = Vec::with_capacity(ops.len());
        let (mut live_bytes, mut live_items, mut bin_bytes, mut bin_items) =
            (0i64, 0i64, 0i64, 0i64);
        for (i, op) in ops.iter().enumerate() {
            let seq = first_seq + i64::try_from(i).unwrap_or(0);
            let cur = current.get(&op.id);
            let live = cur.filter(|c| c.deleted_at.is_none());
            let conflict = || OpResult {
                id: op.id.clone(),
                status: OpStatus::Conflict,
                version: cur.map(|c| c.seq),
                deleted: cur.is_none_or(|c| c.deleted_at.is_some()),
                current: cur.cloned(),
            };
            match op.op {
                WriteOp::Put => {
                    let ok = rules.append_only
                        || match (op.base, cur) {
                            (None, None) => true,
                            (None, Some(c)) => c.deleted_at.is_some(),
                            (Some(b), Some(c)) => c.deleted_at.is_none() && c.seq == b,
                            (Some(_), None) => false,
                        };
                    if !ok {
                        results.push(conflict());
                        continue;
                    }
                    live_bytes += op.size - live.map_or(0, |c| c.size);
                    live_items += i64::from(live.is_none());
                    plan.push((op, seq, None));
                    results.push(OpResult {
                        id: op.id.clone(),
                        status: OpStatus::Applied,
                        version: Some(seq),
                        deleted: false,
                        current: None,
                    });
                }
                WriteOp::Delete => {
                    let Some(c) = live else {
                        results.push(OpResult {
                            id: op.id.clone(),
                            status: OpStatus::Unchanged,
                            version: cur.map(|c| c.seq),
                            deleted: true,
                            current: None,
                        });
                        continue;
                    };
                    if !rules.append_only && op.base != Some(c.seq) {
                        results.push(conflict());
                        continue;
                    }
                    live_bytes -= c.size;
                    live_items -= 1;
                    if rules.recyclable {
                        bin_bytes += c.size;
                        bin_items += 1;
                    }
                    plan.push((op, seq, Some(c.clone())));
                    results.push(OpResult {
                        id: op.id.clone(),
                        status: OpStatus::Applied,
                        version: Some(seq),
                        deleted: true,
                        current: None,
                    });
                }
            }
        }
        if whole && results.iter().any(|r| r.status == OpStatus::Conflict) {
            return Ok(BatchOutcome::Conflicted(results));
        }
        // Files the batch references: they must exist; a pending one (not referenced by any
        // item yet) stops being counted under 'uploads' now that an item counts its bytes.
        let mut file_ids: Vec<&str> = plan
            .iter()
            .filter_map(|(op, _, _)| (op.op == WriteOp::Put).then_some(op.file_id.as_deref()))
            .flatten()
            .collect();
        file_ids.sort_unstable();
        file_ids.dedup();
        let (mut released_bytes, mut released) = (0i64, Vec::new());
        for chunk in file_ids.chunks(100) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT id, size, pending_since FROM files WHERE account_id = $1 AND id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(account.as_i64());
            for id in chunk {
                q = q.bind(*id);
            }
            let rows = q.fetch_all(&mut *tx).await?;
            for id in chunk {
                let row = rows
                    .iter()
                    .find(|r| r.try_get::<String, _>("id").ok().as_deref() == Some(*id));
                let Some(row) = row else {
                    return Ok(BatchOutcome::MissingFile((*id).to_owned()));
                };
                if row.try_get::<Option<i64>, _>("pending_since")?.is_some() {
                    released_bytes += row.try_get::<i64, _>("size")?;
                    released.push(*id);
                }
            }
        }

        let needed = live_bytes + bin_bytes - released_bytes;
        let quota = acct.quota(default_quota);
        if needed > 0 && acct.used_bytes + needed > quota {
            return Ok(BatchOutcome::QuotaExceeded {
                used: acct.used_bytes,
                quota,
                needed,
            });
        }

        // Deletes first, so a batch can put a new entry where it deletes an old one.
        for (op, seq, old) in &plan {
            match op.op {
                WriteOp::Put => {}
                WriteOp::Delete => {
                    sqlx::query(
                        "UPDATE items SET seq = $4, modified_at = $5, deleted_at = $5, size = 0, body = NULL, \
                         summary = NULL, uid = NULL, starts_at = NULL, ends_at = NULL, file_id = NULL, path_key = NULL, path_parent = NULL, \
                         timeline_at = NULL WHERE account_id = $1 AND collection_id = $2 AND id = $3",
                    )
                    .bind(account.as_i64())
                    .bind(&collection.id)
                    .bind(&op.id)
                    .bind(*seq)
                    .bind(now.millis())
                    .execute(&mut *tx)
                    .await?;
                    if let (true, Some(old)) = (rules.recyclable, old) {
                        sqlx::query(
                            "INSERT INTO recycle_bin (account_id, id, collection_id, item_id, kind, body, summary, size, deleted_at, file_id, path_key) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                        )
                        .bind(account.as_i64())
                        .bind(format!("rb_{seq}"))
                        .bind(&collection.id)
                        .bind(&op.id)
                        .bind(&collection.kind)
                        .bind(old.body.clone().unwrap_or_default())
                        .bind(old.summary.clone())
                        .bind(old.size)
                        .bind(now.millis())
                        .bind(old.file_id.clone())
                        .bind(old.path_key.clone())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
        }
        // Puts go in multi-row statements: one round trip per `put_rows` rows, not per row.
        let puts: Vec<(&ItemWrite, i64)> = plan
            .iter()
            .filter(|(op, _, _)| op.op == WriteOp::Put)
            .map(|(op, seq, _)| (*op, *seq))
            .collect();
        for chunk in puts.chunks(put_rows) {
            let mut sql = String::from(
                "INSERT INTO items (account_id, collection_id, id, seq, modified_at, deleted_at, size, body, summary, uid, starts_at, ends_at, file_id, path_key, path_parent) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 14;
                if i > 0 {
                    sql.push_str(", ");
                }
                // Fourteen parameters, with `deleted_at` NULL after the fifth.
                sql.push_str(&format!(
                    "({}, NULL, {})",
                    self.marks(b + 1, 5),
                    self.marks(b + 6, 9)
                ));
            }
            sql.push_str(
                " ON CONFLICT (account_id, collection_id, id) DO UPDATE SET seq = excluded.seq, \
                 modified_at = excluded.modified_at, deleted_at = NULL, size = excluded.size, \
                 body = excluded.body, summary = excluded.summary, uid = excluded.uid, \
                 starts_at = excluded.starts_at, ends_at = excluded.ends_at, file_id = excluded.file_id, \
                 path_key = excluded.path_key, path_parent = excluded.path_parent",
            );
            let mut q = sqlx::query(&sql);
            for (op, seq) in chunk {
                q = q
                    .bind(account.as_i64())
                    .bind(&collection.id)
                    .bind(&op.id)
                    .bind(*seq)
                    .bind(now.millis())
                    .bind(op.size)
                    .bind(op.body.clone())
                    .bind(op.summary.clone())
                    .bind(op.uid.clone())
                    .bind(op.starts_at)
                    .bind(op.ends_at)
                    .bind(op.file_id.clone())
                    .bind(op.path_key.clone())
                    .bind(op.path_key.as_deref().map(path_parent));
            }
            q.execute(&mut *tx).await?;
        }
        if rules.media {
            if let Some(first) = puts.iter().map(|(_, seq)| *seq).min() {
                crate::media::place_on_timeline(&mut tx, account, &collection.id, first).await?;
            }
            let albums: Vec<(&str, &[crate::media::Album])> = plan
                .iter()
                .map(|(op, _, _)| {
                    let albums: &[crate::media::Album] = match op.op {
                        WriteOp::Put => &op.albums,
                        WriteOp::Delete => &[],
                    };
                    (op.id.as_str(), albums)
                })
                .collect();
            self.replace_albums(&mut tx, account, &collection.id, &albums)
                .await?;
        }
        if rules.tree {
            if let Some((id, problem)) = self
                .check_tree(&mut tx, account, &collection.id, &plan)
                .await?
            {
                return Ok(BatchOutcome::TreeRefused { id, problem });
            }
        }
        add_usage(&mut tx, account, &collection.kind, live_bytes, live_items).await?;
        add_usage(&mut tx, account, BIN_CATEGORY, bin_bytes, bin_items).await?;
        for id in &released {
            sqlx::query("UPDATE files SET pending_since = NULL WHERE account_id = $1 AND id = $2")
                .bind(account.as_i64())
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        let n_released = i64::try_from(released.len()).unwrap_or(0);
        add_usage(
            &mut tx,
            account,
            crate::UPLOADS_CATEGORY,
            -released_bytes,
            -n_released,
        )
        .await?;
        if rules.media {
            for (op, r) in ops.iter().zip(&results) {
                if let (OpStatus::Applied, WriteOp::Put, Some(f)) = (r.status, op.op, &op.file_id) {
                    sqlx::query(
                        "INSERT INTO media (account_id, file_id, status, lease_until, attempts, \
                         created_at) VALUES ($1, $2, 'pending', NULL, 0, $3) \
                         ON CONFLICT (account_id, file_id) DO NOTHING",
                    )
                    .bind(account.as_i64())
                    .bind(f.clone())
                    .bind(now.millis())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        if let Some((key, hash)) = idempotency {
            let stored = serde_json::to_string(&results)
                .map_err(|e| StoreError::Corrupt(format!("batch results: {e}")))?;
            sqlx::query(
                "INSERT INTO sync_batches (account_id, key, request_hash, results, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(account.as_i64())
            .bind(key)
            .bind(hash.to_vec())
            .bind(stored)
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(BatchOutcome::Applied {
            changed: !plan.is_empty(),
            results,
        })
    }

    /// The account's committed sequence number: an upper bound every later read can trust.
    pub async fn cloud_seq(&self, account: AccountId) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT seq FROM cloud_accounts WHERE account_id = $1")
                .bind(account.as_i64())
                .fetch_optional(&self.reader)
                .await?
                .unwrap_or(0),
        )
    }

    /// The collection's last change: the highest sequence among its items and tombstones, or
    /// its purge mark when that is higher (the last change was a deletion since forgotten).
    /// Everything in the collection is at or below it, so it is the collection's version.
    pub async fn collection_seq(&self, account: AccountId, collection: &str) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(x) FROM (SELECT MAX(seq) AS x FROM items WHERE account_id = $1 \
             AND collection_id = $2 UNION ALL SELECT purged_seq FROM collections \
             WHERE account_id = $1 AND id = $2) AS s",
        )
        .bind(account.as_i64())
        .bind(collection)
        .fetch_one(&self.reader)
        .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Changes of a collection with `since < seq <= upto`, oldest first, at most `limit`.
    pub async fn changes(
        &self,
        account: AccountId,
        collection: &str,
        since: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Changes> {
        // Without `summary` (no reader of a page uses it); on SQLite through the page readers.
        const SQL: &str = "SELECT id, seq, modified_at, deleted_at, size, body, file_id, \
             path_key FROM items WHERE account_id = $1 AND collection_id = $2 \
             AND seq > $3 AND seq <= $4 ORDER BY seq LIMIT $5";
        // Read after the page: a purge of deletions that the page could have missed is seen.
        const PURGED: &str = "SELECT purged_seq FROM collections WHERE account_id = $1 AND id = $2";
        let Some(pages) = &self.pages else {
            let rows = sqlx::query(SQL)
                .bind(account.as_i64())
                .bind(collection)
                .bind(since)
                .bind(upto)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?
                .iter()
                .map(|r| item_from(r, false))
                .collect::<Result<Vec<_>>>()?;
            let purged_seq: Option<i64> = sqlx::query_scalar(PURGED)
                .bind(account.as_i64())
                .bind(collection)
                .fetch_optional(&self.reader)
                .await?;
            return Ok(Changes {
                rows,
                purged_seq: purged_seq.unwrap_or(0),
            });
        };
        let collection = collection.to_owned();
        pages
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(SQL)?;
                let rows = stmt.query_map(
                    rusqlite::params![account.as_i64(), collection, since, upto, limit],
                    |r| {
                        Ok(ItemRow {
                            id: r.get(0)?,
                            seq: r.get(1)?,
                            modified_at: Timestamp(r.get(2)?),
                            deleted_at: r.get::<_, Option<i64>>(3)?.map(Timestamp),
                            size: r.get(4)?,
                            body: r.get(5)?,
                            summary: None,
                            file_id: r.get(6)?,
                            path_key: r.get(7)?,
                        })
                    },
                )?;
                let mut out = Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(1_024));
                for row in rows {
                    out.push(row?);
                }
                let purged_seq = conn
                    .prepare_cached(PURGED)?
                    .query_row(rusqlite::params![account.as_i64(), collection], |r| {
                        r.get::<_, i64>(0)
                    })
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(0),
                        e => Err(e),
                    })?;
                Ok(Changes {
                    rows: out,
                    purged_seq,
                })
            })
            .await
    }

    /// A page of a collection's live items in the order of their ids, after `after` (""
    /// for the first page), at most `limit`. Each item is in exactly one page, whatever is
    /// written meanwhile (an item changed after its page was read is not seen again): for
    /// reading a whole collection a page at a time (the data export), where the change feed's
    /// order would move a changed item past the end or into a second page.
    pub async fn live_items_page(
        &self,
        account: AccountId,
        collection: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<ItemRow>> {
        sqlx::query(
            "SELECT id, seq, modified_at, deleted_at, size, body, file_id, path_key FROM items \
             WHERE account_id = $1 AND collection_id = $2 AND id > $3 AND deleted_at IS NULL \
             ORDER BY id LIMIT $4",
        )
        .bind(account.as_i64())
        .bind(collection)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| item_from(r, false))
        .collect()
    }

    /// One item (or its tombstone).
    pub async fn item(
        &self,
        account: AccountId,
        collection: &str,
        id: &str,
    ) -> Result<Option<ItemRow>> {
        sqlx::query(&format!(
            "SELECT {ITEM_COLUMNS} FROM items WHERE account_id = $1 AND collection_id = $2 AND id = $3"
        ))
        .bind(account.as_i64())
        .bind(collection)
        .bind(id)
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(item_row)
        .transpose()
    }

    /// The live drive entries in the folder `parent` ("" for the top level).
    pub async fn children(
        &self,
        account: AccountId,
        collection: &str,
        parent: &str,
    ) -> Result<Vec<ItemRow>> {
        sqlx::query(&format!(
            "SELECT {ITEM_COLUMNS} FROM items WHERE account_id = $1 AND collection_id = $2 \
             AND path_parent = $3"
        ))
        .bind(account.as_i64())
        .bind(collection)
        .bind(parent)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(item_row)
        .collect()
    }

    /// The live drive entry at `path_key`.
    pub async fn item_at(
        &self,
        account: AccountId,
        collection: &str,
        path_key: &str,
    ) -> Result<Option<ItemRow>> {
        sqlx::query(&format!(
            "SELECT {ITEM_COLUMNS} FROM items WHERE account_id = $1 AND collection_id = $2 AND path_key = $3"
        ))
        .bind(account.as_i64())
        .bind(collection)
        .bind(path_key)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(item_row)
        .transpose()
    }

    /// A page of the recycle bin, newest first: what was deleted at `since` or later, of one
    /// kind or all, after the cursor (the last entry of the page before).
    pub async fn recycle_bin(
        &self,
        account: AccountId,
        kind: Option<&str>,
        since: Timestamp,
        after: Option<&crate::TimelineCursor>,
        limit: i64,
    ) -> Result<Vec<BinRow>> {
        sqlx::query(
            "SELECT id, collection_id, item_id, kind, summary, size, deleted_at FROM recycle_bin \
             WHERE account_id = $1 AND deleted_at >= $2 AND ($3 IS NULL OR kind = $3) \
             AND ($4 IS NULL OR deleted_at < $4 OR (deleted_at = $4 AND id < $5)) \
             ORDER BY deleted_at DESC, id DESC LIMIT $6",
        )
        .bind(account.as_i64())
        .bind(since.millis())
        .bind(kind)
        .bind(after.and_then(|a| a.at))
        .bind(after.map(|a| a.id.clone()))
        .bind(limit)
        .fetch_all(&self.writer)
        .await?
        .iter()
        .map(|r| {
            Ok(BinRow {
                id: r.try_get("id")?,
                collection_id: r.try_get("collection_id")?,
                item_id: r.try_get("item_id")?,
                kind: r.try_get("kind")?,
                summary: r.try_get("summary")?,
                size: r.try_get("size")?,
                deleted_at: Timestamp(r.try_get("deleted_at")?),
            })
        })
        .collect()
    }

    /// Whether the recycle bin holds a deletion of this item at `since` or later.
    pub async fn bin_holds(
        &self,
        account: AccountId,
        collection: &str,
        item: &str,
        since: Timestamp,
    ) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT 1 FROM recycle_bin WHERE account_id = $1 AND collection_id = $2 \
             AND item_id = $3 AND deleted_at >= $4 LIMIT 1",
        )
        .bind(account.as_i64())
        .bind(collection)
        .bind(item)
        .bind(since.millis())
        .fetch_optional(&self.writer)
        .await?
        .is_some())
    }

    /// Sets what is indexed from a live item's body (its `uid`, `starts_at`, `ends_at`, and its
    /// place on the gallery timeline and its albums when `rules` say it is a photo), if the
    /// item is still at `version`: for an item restored from the recycle bin, which keeps
    /// bodies only. Not a change of the item: its version stays.
    #[allow(clippy::too_many_arguments)]
    pub async fn reindex_item(
        &self,
        account: AccountId,
        collection: &str,
        id: &str,
        version: i64,
        rules: CategoryRules,
        uid: Option<&str>,
        starts_at: Option<i64>,
        ends_at: Option<i64>,
        albums: &[crate::media::Album],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        // The account's lock, as every placing on the timeline takes (see `place_on_timeline`).
        lock_account(&mut tx, account, 0).await?;
        let r = sqlx::query(
            "UPDATE items SET uid = $5, starts_at = $6, ends_at = $7 \
             WHERE account_id = $1 AND collection_id = $2 AND id = $3 AND seq = $4 AND deleted_at IS NULL",
        )
        .bind(account.as_i64())
        .bind(collection)
        .bind(id)
        .bind(version)
        .bind(uid)
        .bind(starts_at)
        .bind(ends_at)
        .execute(&mut *tx)
        .await?;
        if rules.media && r.rows_affected() == 1 {
            crate::media::place_on_timeline(&mut tx, account, collection, version).await?;
            self.replace_albums(&mut tx, account, collection, &[(id, albums)])
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Puts a recycle-bin entry back as a live item (a new change every device pulls).
    pub async fn restore_from_bin(
        &self,
        account: AccountId,
        bin_id: &str,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<RestoreOutcome> {
        let mut tx = self.writer.begin().await?;
        let acct = lock_account(&mut tx, account, 1).await?;
        let Some(r) = sqlx::query(
            "SELECT collection_id, item_id, kind, body, summary, size, file_id, path_key, deleted_at \
             FROM recycle_bin WHERE account_id = $1 AND id = $2 AND deleted_at >= $3",
        )
        .bind(account.as_i64())
        .bind(bin_id)
        .bind(since.millis())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(RestoreOutcome::NotFound);
        };
        let collection_id: String = r.try_get("collection_id")?;
        let item_id: String = r.try_get("item_id")?;
        let kind: String = r.try_get("kind")?;
        let size: i64 = r.try_get("size")?;
        let deleted_at = Timestamp(r.try_get("deleted_at")?);
        let live: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT deleted_at FROM items WHERE account_id = $1 AND collection_id = $2 AND id = $3",
        )
        .bind(account.as_i64())
        .bind(&collection_id)
        .bind(&item_id)
        .fetch_optional(&mut *tx)
        .await?;
        if matches!(live, Some(None)) {
            return Ok(RestoreOutcome::Occupied);
        }
        // A drive entry comes back to its folder only if the name is free there.
        let path_key: Option<String> = r.try_get("path_key")?;
        if let Some(pk) = &path_key {
            let taken: Option<String> = sqlx::query_scalar(
                "SELECT id FROM items WHERE account_id = $1 AND collection_id = $2 AND path_key = $3",
            )
            .bind(account.as_i64())
            .bind(&collection_id)
            .bind(pk)
            .fetch_optional(&mut *tx)
            .await?;
            if taken.is_some() {
                return Ok(RestoreOutcome::Occupied);
            }
        }
        sqlx::query(
            "INSERT INTO items (account_id, collection_id, id, seq, modified_at, deleted_at, size, body, summary, uid, starts_at, ends_at, file_id, path_key, path_parent) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, NULL, NULL, NULL, $9, $10, $11) \
             ON CONFLICT (account_id, collection_id, id) DO UPDATE SET seq = excluded.seq, \
             modified_at = excluded.modified_at, deleted_at = NULL, size = excluded.size, \
             body = excluded.body, summary = excluded.summary, file_id = excluded.file_id, \
             path_key = excluded.path_key, path_parent = excluded.path_parent",
        )
        .bind(account.as_i64())
        .bind(&collection_id)
        .bind(&item_id)
        .bind(acct.seq)
        .bind(now.millis())
        .bind(size)
        .bind(r.try_get::<Vec<u8>, _>("body")?)
        .bind(r.try_get::<Option<Vec<u8>>, _>("summary")?)
        .bind(r.try_get::<Option<String>, _>("file_id")?)
        .bind(path_key.clone())
        .bind(path_key.as_deref().map(path_parent))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM recycle_bin WHERE account_id = $1 AND id = $2")
            .bind(account.as_i64())
            .bind(bin_id)
            .execute(&mut *tx)
            .await?;
        // The bytes move from the bin back to their category: the total does not change.
        add_usage(&mut tx, account, BIN_CATEGORY, -size, -1).await?;
        add_usage(&mut tx, account, &kind, size, 1).await?;
        tx.commit().await?;
        Ok(RestoreOutcome::Restored {
            collection_id,
            item_id,
            version: acct.seq,
            deleted_at,
        })
    }

    /// The bin entries of a drive collection that were in the folder `parent` when they were
    /// deleted at `deleted_at` (with it, when the folder's deletion took them), at most
    /// `limit`: `(bin id, item id)`. A range of `recycle_bin_account_age`.
    pub async fn bin_children(
        &self,
        account: AccountId,
        collection: &str,
        parent: &str,
        deleted_at: Timestamp,
        limit: i64,
    ) -> Result<Vec<(String, String)>> {
        let prefix = format!("{parent}/");
        let rows = sqlx::query(
            "SELECT id, item_id FROM recycle_bin WHERE account_id = $1 AND deleted_at = $2 \
             AND collection_id = $3 AND substr(path_key, 1, CAST($4 AS INTEGER)) = $5 ORDER BY id LIMIT $6",
        )
        .bind(account.as_i64())
        .bind(deleted_at.millis())
        .bind(collection)
        .bind(i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX))
        .bind(&prefix)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("item_id")?)))
            .collect()
    }

    /// Deletes recycle-bin entries for good (all of the account's when `bin_id` is `None`);
    /// returns how many.
    pub async fn purge_bin(&self, account: AccountId, bin_id: Option<&str>) -> Result<u64> {
        self.delete_from_bin(account, bin_id, None).await
    }

    /// Deletes the account's bin entries matching `bin_id` (any when `None`) and deleted before
    /// `cutoff` (any when `None`), freeing their space, in one transaction under the account lock.
    async fn delete_from_bin(
        &self,
        account: AccountId,
        bin_id: Option<&str>,
        cutoff: Option<Timestamp>,
    ) -> Result<u64> {
        const WHERE: &str =
            "account_id = $1 AND ($2 IS NULL OR id = $2) AND ($3 IS NULL OR deleted_at < $3)";
        let mut tx = self.writer.begin().await?;
        lock_account(&mut tx, account, 0).await?;
        let r = sqlx::query(&format!(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes \
             FROM recycle_bin WHERE {WHERE}"
        ))
        .bind(account.as_i64())
        .bind(bin_id)
        .bind(cutoff.map(|c| c.millis()))
        .fetch_one(&mut *tx)
        .await?;
        let (n, bytes): (i64, i64) = (r.try_get("n")?, r.try_get("bytes")?);
        sqlx::query(&format!("DELETE FROM recycle_bin WHERE {WHERE}"))
            .bind(account.as_i64())
            .bind(bin_id)
            .bind(cutoff.map(|c| c.millis()))
            .execute(&mut *tx)
            .await?;
        add_usage(&mut tx, account, BIN_CATEGORY, -bytes, -n).await?;
        tx.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Accounts on `plan` with recycle-bin entries deleted before `cutoff`.
    pub async fn accounts_with_expired_bin(
        &self,
        plan: &str,
        cutoff: Timestamp,
    ) -> Result<Vec<AccountId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT b.account_id FROM recycle_bin b JOIN cloud_accounts c ON c.account_id = b.account_id \
             WHERE c.plan = $1 AND b.deleted_at < $2",
        )
        .bind(plan)
        .bind(cutoff.millis())
        .fetch_all(&self.reader)
        .await?;
        Ok(ids.into_iter().filter_map(AccountId::from_i64).collect())
    }

    /// Purges an account's recycle-bin entries deleted before `cutoff`, freeing their space.
    pub async fn purge_expired_bin(&self, account: AccountId, cutoff: Timestamp) -> Result<u64> {
        self.delete_from_bin(account, None, Some(cutoff)).await
    }

    /// Forgets tombstones deleted before `cutoff`; tokens older than them must then resync.
    /// The mark only moves up: deletion times do not follow sequence order (a batch takes its
    /// time before the account's lock), so a later purge may remove a lower sequence.
    pub async fn purge_tombstones(&self, cutoff: Timestamp) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE collections SET purged_seq = (SELECT MAX(i.seq) FROM items i \
               WHERE i.account_id = collections.account_id AND i.collection_id = collections.id \
               AND i.deleted_at IS NOT NULL AND i.deleted_at < $1) \
             WHERE (SELECT MAX(i.seq) FROM items i WHERE i.account_id = collections.account_id \
               AND i.collection_id = collections.id AND i.deleted_at IS NOT NULL \
               AND i.deleted_at < $1) > collections.purged_seq",
        )
        .bind(cutoff.millis())
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query("DELETE FROM items WHERE deleted_at IS NOT NULL AND deleted_at < $1")
            .bind(cutoff.millis())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Forgets applied batches older than `cutoff`.
    pub async fn purge_batches(&self, cutoff: Timestamp) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM sync_batches WHERE created_at < $1")
                .bind(cutoff.millis())
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }

    /// The categories a device syncs (`None`: never chosen, so all of them).
    pub async fn device_categories(
        &self,
        account: AccountId,
        session: &str,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT categories FROM sync_devices WHERE account_id = $1 AND session_id = $2",
        )
        .bind(account.as_i64())
        .bind(session)
        .fetch_optional(&self.writer)
        .await?)
    }

    pub async fn set_device_categories(
        &self,
        account: AccountId,
        session: &str,
        categories: &str,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO sync_devices (account_id, session_id, categories, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, session_id) DO UPDATE SET categories = excluded.categories, updated_at = excluded.updated_at",
        )
        .bind(account.as_i64())
        .bind(session)
        .bind(categories)
        .bind(now.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Proves that recorded usage equals what is stored, for every account: per category against
    /// the live items, the recycle bin, uploads and the files backups hold (each once), and the
    /// total against the categories.
    pub async fn check_usage(&self) -> Result<Vec<UsageMismatch>> {
        let actual_rows = sqlx::query(
            "SELECT i.account_id AS account_id, c.kind AS category, \
               CAST(COALESCE(SUM(i.size), 0) AS BIGINT) AS bytes \
             FROM items i JOIN collections c ON c.account_id = i.account_id AND c.id = i.collection_id \
             WHERE i.deleted_at IS NULL GROUP BY i.account_id, c.kind \
             UNION ALL \
             SELECT account_id, 'recycle_bin' AS category, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes \
             FROM recycle_bin GROUP BY account_id \
             UNION ALL \
             SELECT account_id, 'uploads' AS category, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes \
             FROM files WHERE pending_since IS NOT NULL GROUP BY account_id \
             UNION ALL \
             SELECT account_id, 'uploads' AS category, CAST(COALESCE(SUM(committed + tail_len), 0) AS BIGINT) AS bytes \
             FROM uploads WHERE file_id IS NULL GROUP BY account_id \
             UNION ALL \
             SELECT f.account_id AS account_id, 'backups' AS category, CAST(COALESCE(SUM(f.size), 0) AS BIGINT) AS bytes \
             FROM files f WHERE EXISTS (SELECT 1 FROM backup_parts p WHERE p.account_id = f.account_id AND p.file_id = f.id) \
             GROUP BY f.account_id",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut actual = std::collections::BTreeMap::<(i64, String), i64>::new();
        for r in &actual_rows {
            *actual
                .entry((r.try_get("account_id")?, r.try_get("category")?))
                .or_default() += r.try_get::<i64, _>("bytes")?;
        }
        let mut recorded = std::collections::BTreeMap::<(i64, String), i64>::new();
        for r in sqlx::query("SELECT account_id, category, bytes FROM cloud_usage")
            .fetch_all(&self.reader)
            .await?
        {
            recorded.insert(
                (r.try_get("account_id")?, r.try_get("category")?),
                r.try_get("bytes")?,
            );
        }
        let mut out = Vec::new();
        let keys: std::collections::BTreeSet<_> =
            actual.keys().chain(recorded.keys()).cloned().collect();
        let mut per_account = std::collections::BTreeMap::<i64, i64>::new();
        for k in keys {
            let a = actual.get(&k).copied().unwrap_or(0);
            let r = recorded.get(&k).copied().unwrap_or(0);
            *per_account.entry(k.0).or_default() += a;
            if a != r {
                out.push(UsageMismatch {
                    account: k.0,
                    category: k.1,
                    recorded: r,
                    actual: a,
                });
            }
        }
        for r in sqlx::query("SELECT account_id, used_bytes FROM cloud_accounts")
            .fetch_all(&self.reader)
            .await?
        {
            let id: i64 = r.try_get("account_id")?;
            let used: i64 = r.try_get("used_bytes")?;
            let sum = per_account.get(&id).copied().unwrap_or(0);
            if used != sum {
                out.push(UsageMismatch {
                    account: id,
                    category: "total".into(),
                    recorded: used,
                    actual: sum,
                });
            }
        }
        Ok(out)
    }
}

/// A batch's planned writes: each op, its sequence number, and the live item it replaces.
type Plan<'a> = [(&'a ItemWrite, i64, Option<ItemRow>)];

impl Store {
    /// Checks a tree collection's state after a batch's writes, inside the batch's transaction:
    /// every entry it put is in a live folder, not inside itself, at most [`MAX_TREE_DEPTH`]
    /// deep; and every entry it deleted or turned into a file holds no live entry. Returns the
    /// first write that breaks it. Reads each stored folder above the batch once, one query
    /// per level.
    async fn check_tree(
        &self,
        tx: &mut Transaction<'static, Any>,
        account: AccountId,
        collection: &str,
        plan: &Plan<'_>,
    ) -> Result<Option<(String, TreeProblem)>> {
        use std::collections::{HashMap, HashSet};
        let (lookup_ids, _) = self.batch_sizes();
        // Nothing may stay inside what stops being a live folder.
        let emptied: Vec<&str> = plan
            .iter()
            .filter(|(op, _, _)| op.op == WriteOp::Delete || op.file_id.is_some())
            .map(|(op, _, _)| op.id.as_str())
            .collect();
        for chunk in emptied.chunks(lookup_ids) {
            let sql = format!(
                "SELECT id, path_parent FROM items WHERE account_id = {} AND collection_id = {} \
                 AND path_parent IN ({}) AND deleted_at IS NULL LIMIT 1",
                self.mark(1),
                self.mark(2),
                self.marks(3, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(account.as_i64()).bind(collection);
            for id in chunk {
                q = q.bind(*id);
            }
            if let Some(r) = q.fetch_optional(&mut **tx).await? {
                let (child, parent): (String, String) =
                    (r.try_get("id")?, r.try_get("path_parent")?);
                return Ok(Some((parent, TreeProblem::NotEmpty(child))));
            }
        }

        // Live entries after the batch, by id: their folder ("" for the top level) and whether
        // they are folders. The batch's own puts first; stored entries above them as needed.
        let puts: Vec<(&str, String)> = plan
            .iter()
            .filter(|(op, _, _)| op.op == WriteOp::Put)
            .map(|(op, _, _)| {
                let parent = op.path_key.as_deref().map(path_parent).unwrap_or_default();
                (op.id.as_str(), parent)
            })
            .collect();
        let mut live: HashMap<String, (String, bool)> = plan
            .iter()
            .filter(|(op, _, _)| op.op == WriteOp::Put)
            .zip(&puts)
            .map(|((op, _, _), (id, parent))| {
                ((*id).to_owned(), (parent.clone(), op.file_id.is_none()))
            })
            .collect();
        let mut missing: HashSet<String> = HashSet::new();
        let mut wanted: Vec<String> = puts
            .iter()
            .map(|(_, p)| p.clone())
            .filter(|p| !p.is_empty() && !live.contains_key(p))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut levels = 0;
        while !wanted.is_empty() && levels <= MAX_TREE_DEPTH {
            levels += 1;
            let mut next = HashSet::new();
            for chunk in wanted.chunks(lookup_ids) {
                let sql = format!(
                    "SELECT id, path_parent, file_id FROM items WHERE account_id = {} \
                     AND collection_id = {} AND id IN ({}) AND deleted_at IS NULL",
                    self.mark(1),
                    self.mark(2),
                    self.marks(3, chunk.len())
                );
                let mut q = sqlx::query(&sql).bind(account.as_i64()).bind(collection);
                for id in chunk {
                    q = q.bind(id.as_str());
                }
                for r in q.fetch_all(&mut **tx).await? {
                    let id: String = r.try_get("id")?;
                    let parent: String = r
                        .try_get::<Option<String>, _>("path_parent")?
                        .unwrap_or_default();
                    let file: Option<String> = r.try_get("file_id")?;
                    if !parent.is_empty() && !live.contains_key(&parent) {
                        next.insert(parent.clone());
                    }
                    live.insert(id, (parent, file.is_none()));
                }
            }
            for id in wanted.drain(..) {
                if !live.contains_key(&id) {
                    missing.insert(id);
                }
            }
            next.retain(|id| !live.contains_key(id) && !missing.contains(id));
            wanted = next.into_iter().collect();
        }

        for (id, parent) in &puts {
            let mut at = parent.as_str();
            let mut depth = 0;
            while !at.is_empty() {
                if at == *id {
                    return Ok(Some(((*id).to_owned(), TreeProblem::Loop)));
                }
                let Some((up, folder)) = live.get(at) else {
                    return Ok(Some((
                        (*id).to_owned(),
                        TreeProblem::NoFolder(at.to_owned()),
                    )));
                };
                if depth == 0 && !folder {
                    return Ok(Some((
                        (*id).to_owned(),
                        TreeProblem::NotAFolder(at.to_owned()),
                    )));
                }
                depth += 1;
                if depth > MAX_TREE_DEPTH {
                    return Ok(Some(((*id).to_owned(), TreeProblem::TooDeep)));
                }
                at = up;
            }
        }
        Ok(None)
    }
}
