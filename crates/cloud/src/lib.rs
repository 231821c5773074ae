//! The personal cloud's sync engine (PRODUCT.md CL-1, CL-2, CL-3, CL-6).
//!
//! Per account, collections of items; each collection has a category ([`Category`]) that fixes
//! the items' format and rules. Every change takes the next number of the account's sequence in
//! the transaction that makes it; a sync token is a position in that sequence, so "what changed
//! since T" is exact, and paging by sequence is stable under concurrent writes (see
//! `mica_store::cloud`). Writes are conditional on the version the client last saw; a stale
//! write comes back as a conflict with the server's item. Retried batches are answered from
//! their first run. Deleted items go to the recycle bin; one quota counts every stored byte.
//! After each commit, devices connected to this node are told through the [`hub::Hub`].

pub mod backups;
pub mod category;
pub mod drive;
mod error;
pub mod files;
pub mod hub;
pub mod integrity;
pub mod media;
pub mod video;

use std::sync::Arc;
use std::time::Duration;

use mica_core::archive::{ArchiveWriter, Entry, JsonArray};
use mica_core::crypto::Keys;
use mica_core::{AccountId, Clock, SessionId, Timestamp};
use mica_store::{
    BatchOutcome, CollectionRow, ItemRow, ItemWrite, OpStatus, RestoreOutcome, Store,
    TimelineCursor, TreeProblem, WriteOp, BIN_CATEGORY,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use backups::{BackupDetail, BackupPlan, BackupSource, BackupView, PartSpec};
pub use category::Category;
pub use drive::DriveItem;
pub use error::CloudError;
pub use files::{Checksum, FileInfo, UploadInfo, CHECKSUM_ALGORITHMS};
pub use hub::{Change, Hub, Wake};
pub use mica_blobs::BlobStore;

/// Tunables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudConfig {
    /// Storage per account unless its plan says otherwise, in bytes (5 GB).
    pub quota_bytes: i64,
    /// The largest item body, in bytes.
    pub max_item_bytes: usize,
    /// The most writes in one batch.
    pub max_batch: usize,
    /// The most entries a drive folder's copy or deletion takes (one transaction).
    pub max_tree: usize,
    /// The most collections an account may have, the categories' own included.
    pub max_collections: i64,
    /// Recycle-bin retention on the free plan, in days.
    pub free_retention_days: u64,
    /// Recycle-bin retention on the premium plan, in days.
    pub premium_retention_days: u64,
    /// How long deletions stay in the change feed, in days; older sync tokens must resync.
    pub tombstone_days: u64,
    /// The largest file, in bytes (`Tus-Max-Size`).
    pub max_file_bytes: i64,
    /// How long an unfinished upload may stay idle before it is dropped, in hours.
    pub upload_ttl_hours: u64,
    /// How long a finished upload waits for an item to reference it, in hours.
    pub pending_file_hours: u64,
    /// Photos above this many megapixels get no preview (decompression bombs stop here).
    pub max_preview_megapixels: u64,
    /// Files above this size get no preview, in bytes.
    pub max_preview_bytes: i64,
    /// Videos above this size get no preview, in bytes (a video is copied to a temporary file
    /// in `TMPDIR` for its metadata and ffmpeg).
    pub max_video_preview_bytes: i64,
    /// The ffmpeg that takes a video's preview frame: a path, or a name looked up in `PATH`.
    /// Without one, videos get their metadata but no preview.
    pub ffmpeg: String,
    /// How long ffmpeg may take over one video, in seconds.
    pub ffmpeg_timeout_secs: u64,
    /// Where a video is copied while its metadata and frame are read: the data folder's `tmp`
    /// unless set (not `TMPDIR`, which is often memory).
    pub scratch_dir: Option<std::path::PathBuf>,
    /// How many backups of each device are kept; a new one deletes the oldest past this.
    pub backups_per_device: usize,
    /// How often every backup is read back and checked, in days.
    pub backup_verify_days: u64,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            quota_bytes: 5_000_000_000,
            max_item_bytes: 1 << 20,
            max_batch: 1000,
            max_tree: 20_000,
            max_collections: 1000,
            free_retention_days: 30,
            premium_retention_days: 60,
            tombstone_days: 90,
            max_file_bytes: 50 * (1 << 30),
            upload_ttl_hours: 24,
            pending_file_hours: 24,
            max_preview_megapixels: 40,
            max_preview_bytes: 64 << 20,
            max_video_preview_bytes: 4 << 30,
            ffmpeg: "ffmpeg".into(),
            ffmpeg_timeout_secs: 60,
            scratch_dir: None,
            backups_per_device: 3,
            backup_verify_days: 30,
        }
    }
}

/// Changes returned per pull unless the client asks for fewer.
pub const DEFAULT_PAGE: i64 = 500;
/// The most changes one pull returns.
pub const MAX_PAGE: i64 = 1000;
/// How long a batch's idempotency key is remembered.
const BATCH_MEMORY: Duration = Duration::from_secs(7 * 86_400);

/// One write of a push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Write {
    pub id: String,
    /// `put` or `delete`.
    pub op: String,
    /// The version (etag) the client last saw; absent for a create.
    pub base_version: Option<String>,
    /// For `put`: a vCard or iCalendar string, or the category's JSON object — as the client
    /// sent it, parsed only when the write is checked (one write at a time per core, after its
    /// size: a batch's JSON never becomes a whole tree in memory).
    pub body: Option<Box<serde_json::value::RawValue>>,
}

/// An item as a device receives it.
#[derive(Debug, Clone)]
pub struct ItemView {
    pub id: String,
    pub version: String,
    pub deleted: bool,
    pub modified_at: Timestamp,
    /// `None` when deleted.
    pub body: Option<serde_json::Value>,
}

/// The outcome of one write.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub id: String,
    pub status: OpStatus,
    /// The item's version now (`None`: it does not exist).
    pub version: Option<String>,
    pub deleted: bool,
    /// For a conflict: the server's item, to merge with.
    pub current: Option<ItemView>,
}

#[derive(Debug, Clone)]
pub struct PushOutcome {
    pub results: Vec<WriteResult>,
    /// This is the answer of an earlier run of the same batch.
    pub replayed: bool,
}

#[derive(Debug, Clone)]
pub struct Pull {
    pub changes: Vec<ItemView>,
    /// Ask with this next time.
    pub token: String,
    /// More changes wait: pull again right away.
    pub more: bool,
}

#[derive(Debug, Clone)]
pub struct CollectionInfo {
    pub id: String,
    pub category: Category,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct BinEntry {
    pub id: String,
    pub category: Category,
    pub collection_id: String,
    pub item_id: String,
    pub summary: String,
    pub size: i64,
    pub deleted_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Where the originals of a collection's items go in the archive: named after the item
/// (`files/<category>/<collection>/<name>`; a drive file under its folders), made safe for a
/// zip, and numbered when two would share a path.
struct Originals<'a> {
    category: Category,
    collection: &'a str,
    /// A drive's folders, by id: (parent, name).
    folders: std::collections::HashMap<String, (Option<String>, String)>,
    taken: std::collections::HashSet<String>,
}

impl<'a> Originals<'a> {
    fn new(category: Category, collection: &'a str) -> Originals<'a> {
        Originals {
            category,
            collection,
            folders: Default::default(),
            taken: Default::default(),
        }
    }

    /// Learns where a drive folder is, for the paths of the files in it (all of a drive's
    /// folders before the first file is placed).
    fn learn_folder(&mut self, item: &ItemView) {
        if field(item, "kind").as_deref() == Some("folder") {
            let place = (
                field(item, "parent"),
                field(item, "name").unwrap_or_default(),
            );
            self.folders.insert(item.id.clone(), place);
        }
    }

    /// The path of the original of `item`, not taken by any placed before it.
    fn place(&mut self, item: &ItemView) -> String {
        let mut parts = vec![safe_name(
            &field(item, "name").unwrap_or_else(|| item.id.clone()),
        )];
        let mut parent = field(item, "parent");
        // The tree is checked on every write (no loop, at most 64 deep); the bound is a guard.
        for _ in 0..64 {
            let Some((up, name)) = parent.as_deref().and_then(|p| self.folders.get(p)) else {
                break;
            };
            parts.push(safe_name(name));
            parent = up.clone();
        }
        parts.reverse();
        let base = format!(
            "files/{}/{}/{}",
            self.category.as_str(),
            self.collection,
            parts.join("/")
        );
        let mut path = base.clone();
        let mut n = 2;
        while !self.taken.insert(path.clone()) {
            path = numbered(&base, n);
            n += 1;
        }
        path
    }
}

/// A string field of a JSON item's body.
fn field(item: &ItemView, name: &str) -> Option<String> {
    item.body
        .as_ref()
        .and_then(|b| b.get(name))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// A name as one component of a path in a zip: no separators, no control characters, not
/// `.` or `..`, and at most 200 bytes (a zip entry's whole name must fit 65,535, and file
/// systems take 255 per component).
fn safe_name(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        let c = if c == '/' || c == '\\' || c.is_control() {
            '_'
        } else {
            c
        };
        if s.len() + c.len_utf8() > 200 {
            break;
        }
        s.push(c);
    }
    match s.as_str() {
        "" | "." | ".." => "_".to_owned(),
        _ => s,
    }
}

/// `dir/name (n).ext` for `dir/name.ext`.
fn numbered(path: &str, n: u32) -> String {
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    let (stem, ext) = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, format!(".{ext}")),
        _ => (file, String::new()),
    };
    format!("{dir}/{stem} ({n}){ext}")
}

/// The most recycle-bin entries in one page.
pub const MAX_BIN_PAGE: usize = 1000;

/// The most entries one "restore everything deleted since" brings back; the answer says
/// whether more are left for the next call.
pub const MAX_BULK_RESTORE: usize = 5000;

/// What a restore of everything deleted since a moment did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkRestore {
    /// Entries back where they were (a folder's contents included).
    pub restored: u64,
    /// Entries left in the bin because their place is taken again (an item with the same id,
    /// a drive entry with the same name in the same folder).
    pub kept: u64,
    /// More entries deleted since then are still in the bin: call again with `next`.
    pub more: bool,
    /// Where the next call goes on (present when `more`).
    pub next: Option<String>,
}

/// A page of the recycle bin.
#[derive(Debug, Clone)]
pub struct BinPage {
    pub entries: Vec<BinEntry>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Usage {
    pub plan: String,
    pub quota_bytes: i64,
    pub used_bytes: i64,
    /// `(category, bytes, items)`, `recycle_bin` included.
    pub categories: Vec<(String, i64, i64)>,
}

/// The sync engine. Cheap to clone.
#[derive(Clone)]
pub struct Cloud {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    keys: Arc<Keys>,
    clock: Arc<dyn Clock>,
    cfg: CloudConfig,
    hub: Hub,
    blobs: BlobStore,
    media: Arc<tokio::sync::Notify>,
    /// Wakes the loop that verifies backups.
    backups: Arc<tokio::sync::Notify>,
    /// Upload bytes held for a checksum on this node (see [`files::Held`]).
    held: files::Held,
    /// How many threads a large batch's checks or a page's opening is spread over (the
    /// machine's cores; see [`on_cores`]).
    cores: usize,
    /// Who writes to an account's owner (storage running out), once set at start-up.
    notices: std::sync::OnceLock<Arc<dyn mica_core::notices::OwnerNotices>>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// The owner's message when their storage reached `level` % of its quota.
fn storage_notice(level: i64, used: i64, quota: i64) -> (&'static str, String) {
    let gb = |b: i64| format!("{:.1} GB", b as f64 / 1e9);
    let amount = format!("{} of {} used", gb(used), gb(quota));
    if level >= 100 {
        (
            "your storage is full",
            format!(
                "Your storage is full ({amount}). New photos, files, backups and changes from \
                 your devices are no longer saved until you free space: delete what you no \
                 longer need and empty the recycle bin, which counts too."
            ),
        )
    } else {
        (
            "your storage is almost full",
            format!(
                "Your storage is {}% full ({amount}). When it is full, new photos, files, \
                 backups and changes from your devices stop being saved. Delete what you no \
                 longer need, and empty the recycle bin, which counts too.",
                (used.saturating_mul(100) / quota.max(1)).clamp(level, 99)
            ),
        )
    }
}

/// Ids of collections and items: what a URL path segment and a file name can hold safely.
fn check_id(field: &'static str, id: &str, max: usize) -> Result<(), CloudError> {
    let ok = !id.is_empty()
        && id.len() <= max
        && id != "."
        && id != ".."
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@' | b'+' | b'=')
        });
    if ok {
        Ok(())
    } else {
        Err(CloudError::Invalid {
            field,
            message: format!(
                "ids are 1 to {max} characters among letters, digits and - _ . ~ @ + = (no slashes)"
            ),
        })
    }
}

/// Why a drive batch was refused, for the client.
fn tree_error(problem: TreeProblem) -> CloudError {
    let parent = |message: String| CloudError::Invalid {
        field: "parent",
        message,
    };
    match problem {
        TreeProblem::NoFolder(p) => parent(format!("there is no folder {p}")),
        TreeProblem::NotAFolder(p) => parent(format!("{p} is a file, not a folder")),
        TreeProblem::Loop => parent("a folder cannot go inside itself".into()),
        TreeProblem::TooDeep => parent(format!(
            "folders nest at most {} deep",
            mica_store::MAX_TREE_DEPTH
        )),
        TreeProblem::NotEmpty(child) => CloudError::FolderNotEmpty(child),
    }
}

fn version_text(seq: i64) -> String {
    seq.to_string()
}

/// Signed-in apps connected to this node's sync channel get a `notice` event.
impl mica_core::notices::DeviceNotices for Cloud {
    fn tell_devices(&self, account: AccountId, notice: &mica_core::notices::DeviceNotice) {
        self.inner.hub.notify(account, notice);
    }
}

impl Cloud {
    pub fn new(
        store: Store,
        blobs: BlobStore,
        keys: Arc<Keys>,
        clock: Arc<dyn Clock>,
        cfg: CloudConfig,
    ) -> Cloud {
        Cloud {
            inner: Arc::new(Inner {
                store,
                keys,
                clock,
                cfg,
                hub: Hub::default(),
                blobs,
                media: Arc::default(),
                backups: Arc::default(),
                held: files::Held::default(),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                notices: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Who tells an account's owner that their storage runs out (the identity service).
    pub fn set_owner_notices(&self, n: Arc<dyn mica_core::notices::OwnerNotices>) {
        let _ = self.inner.notices.set(n);
    }

    pub fn config(&self) -> &CloudConfig {
        &self.inner.cfg
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn aad(what: &str, account: AccountId, collection: &str, id: &str) -> String {
        format!("{what}\0{account}\0{collection}\0{id}")
    }

    fn retention(&self, plan: &str) -> Duration {
        let days = if plan == "premium" {
            self.inner.cfg.premium_retention_days
        } else {
            self.inner.cfg.free_retention_days
        };
        Duration::from_secs(days * 86_400)
    }

    fn info(c: &CollectionRow) -> Result<CollectionInfo, CloudError> {
        Ok(CollectionInfo {
            id: c.id.clone(),
            category: Category::parse(&c.kind)
                .ok_or_else(|| CloudError::Internal(format!("collection kind {}", c.kind)))?,
            name: c.name.clone(),
            created_at: c.created_at,
        })
    }

    /// The account's collections: its own, and one default per category (named after it).
    pub async fn collections(&self, account: AccountId) -> Result<Vec<CollectionInfo>, CloudError> {
        let now = self.now();
        let existing = self.store().collections(account).await?;
        let mut out = Vec::with_capacity(existing.len() + Category::ALL.len());
        for c in Category::ALL {
            if !existing.iter().any(|e| e.id == c.as_str()) {
                out.push(CollectionInfo {
                    id: c.as_str().into(),
                    category: c,
                    name: default_name(c).into(),
                    created_at: now,
                });
            }
        }
        for e in &existing {
            out.push(Self::info(e)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Creates a collection (a second address book or calendar, say).
    pub async fn create_collection(
        &self,
        account: AccountId,
        id: &str,
        category: &str,
        name: &str,
    ) -> Result<CollectionInfo, CloudError> {
        check_id("id", id, 64)?;
        let category = Category::parse(category).ok_or(CloudError::UnknownCategory)?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(CloudError::Invalid {
                field: "name",
                message:
                    "give the collection a name of 1 to 100 characters, without control characters"
                        .into(),
            });
        }
        if Category::parse(id).is_some_and(|c| c != category) {
            return Err(CloudError::Invalid {
                field: "id",
                message: format!("{id} is the default collection of another category"),
            });
        }
        let max = self.inner.cfg.max_collections;
        let row = self
            .store()
            .create_collection(account, id, category.as_str(), name, self.now(), max)
            .await?
            .ok_or(CloudError::TooManyCollections(max))?;
        if row.kind != category.as_str() {
            return Err(CloudError::CollectionExists);
        }
        Self::info(&row)
    }

    /// The collection, materialising a category's default one on first use.
    async fn resolve(&self, account: AccountId, id: &str) -> Result<CollectionRow, CloudError> {
        check_id("collection", id, 64)?;
        if let Some(c) = self.store().collection(account, id).await? {
            return Ok(c);
        }
        match Category::parse(id) {
            Some(c) => Ok(self
                .store()
                .ensure_collection(account, id, c.as_str(), default_name(c), self.now())
                .await?),
            None => Err(CloudError::NotFound),
        }
    }

    fn category_of(c: &CollectionRow) -> Result<Category, CloudError> {
        Category::parse(&c.kind)
            .ok_or_else(|| CloudError::Internal(format!("collection kind {}", c.kind)))
    }

    fn view(
        &self,
        account: AccountId,
        collection: &CollectionRow,
        category: Category,
        row: &ItemRow,
    ) -> Result<ItemView, CloudError> {
        view_row(&self.inner.keys, account, &collection.id, category, row)
    }

    fn token(account: AccountId, collection: &CollectionRow, seq: i64) -> String {
        format!("s1.{seq}.{}", Self::token_tag(account, collection))
    }

    /// Binds a token to its account and collection (as created: a re-created collection does
    /// not accept the old one's tokens).
    fn token_tag(account: AccountId, collection: &CollectionRow) -> String {
        let mut h = Sha256::new();
        h.update(account.as_i64().to_be_bytes());
        h.update(collection.id.as_bytes());
        h.update([0]);
        h.update(collection.created_at.millis().to_be_bytes());
        h.finalize()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// What changed in a collection since `token` (everything when `None`), oldest first.
    pub async fn pull(
        &self,
        account: AccountId,
        collection: &str,
        token: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Pull, CloudError> {
        let c = self.resolve(account, collection).await?;
        let category = Self::category_of(&c)?;
        // Read the committed sequence first: every change at or below it is visible now.
        let upto = self.store().cloud_seq(account).await?;
        let since = match token {
            None => 0,
            Some(t) => {
                let mut parts = t.split('.');
                let (Some("s1"), Some(seq), Some(tag), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(CloudError::InvalidToken);
                };
                let seq: i64 = seq.parse().map_err(|_| CloudError::InvalidToken)?;
                if tag != Self::token_tag(account, &c) || seq < 0 || seq > upto {
                    return Err(CloudError::UnknownToken);
                }
                if seq < c.purged_seq {
                    return Err(CloudError::TokenExpired);
                }
                seq
            }
        };
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let page = self
            .store()
            .changes(account, &c.id, since, upto, limit + 1)
            .await?;
        // Deletions purged while the page was read: the token has missed them after all.
        if token.is_some() && since < page.purged_seq {
            return Err(CloudError::TokenExpired);
        }
        let mut rows = page.rows;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        // When the page ends the feed, the collection holds no change between its last row and
        // `upto`: the token is the collection's own version (what `collection_state` reports,
        // so a client that compares the two sees nothing new), not the account's.
        let next = if more {
            rows.last().map_or(upto, |r| r.seq)
        } else {
            rows.last()
                .map_or(since, |r| r.seq.max(since))
                .max(page.purged_seq.min(upto))
        };
        // Opening the bodies (and making them JSON) is most of a page's CPU: over every core.
        let keys = self.inner.keys.clone();
        let collection_id = c.id.clone();
        let changes = on_cores(self.inner.cores, &rows.into(), move |r| {
            view_row(&keys, account, &collection_id, category, r)
        })
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Pull {
            changes,
            token: Self::token(account, &c, next),
            more,
        })
    }

    /// One item.
    pub async fn item(
        &self,
        account: AccountId,
        collection: &str,
        id: &str,
    ) -> Result<ItemView, CloudError> {
        check_id("id", id, 200)?;
        let c = self.resolve(account, collection).await?;
        let category = Self::category_of(&c)?;
        let row = self
            .store()
            .item(account, &c.id, id)
            .await?
            .filter(|r| r.deleted_at.is_none())
            .ok_or(CloudError::NotFound)?;
        self.view(account, &c, category, &row)
    }

    /// A collection and its version: the sync token of its last change, which stays the same
    /// while nothing in the collection changes (CardDAV's and CalDAV's `sync-token` and
    /// `getctag`).
    pub async fn collection_state(
        &self,
        account: AccountId,
        collection: &str,
    ) -> Result<(CollectionInfo, String), CloudError> {
        let c = self.resolve(account, collection).await?;
        let seq = self.store().collection_seq(account, &c.id).await?;
        Ok((Self::info(&c)?, Self::token(account, &c, seq)))
    }

    /// Every live item of a collection, in the order of their ids (read a page at a time, each
    /// item once).
    pub async fn live_items(
        &self,
        account: AccountId,
        collection: &str,
    ) -> Result<Vec<ItemView>, CloudError> {
        let c = self.resolve(account, collection).await?;
        let category = Self::category_of(&c)?;
        let mut after = String::new();
        let mut out = Vec::new();
        while let Some(rows) = self.export_page(account, &c.id, &mut after).await? {
            for r in &rows {
                out.push(self.view(account, &c, category, r)?);
            }
        }
        Ok(out)
    }

    /// Applies a batch of writes to one collection: validated as a whole (one bad write refuses
    /// the batch, nothing stored), then applied in one transaction with a result per write —
    /// `applied`, `conflict` (with the server's item) or `unchanged`. With an idempotency key, a
    /// retry of the same batch gets the first run's results and changes nothing.
    pub async fn push(
        &self,
        account: AccountId,
        collection: &str,
        writes: Vec<Write>,
        idempotency_key: Option<&str>,
    ) -> Result<PushOutcome, CloudError> {
        let max = self.inner.cfg.max_batch;
        if writes.len() > max {
            return Err(CloudError::BatchTooLarge(max));
        }
        self.apply(account, collection, writes, idempotency_key, false)
            .await
    }

    /// A batch of any size applied as one transaction: a client's push, within its bound, or
    /// the server's own (a drive folder's copy or deletion, within [`CloudConfig::max_tree`]).
    /// A `whole` batch is all or nothing: a conflict anywhere is [`CloudError::DriveConflict`]
    /// and nothing is written.
    async fn apply(
        &self,
        account: AccountId,
        collection: &str,
        writes: Vec<Write>,
        idempotency_key: Option<&str>,
        whole: bool,
    ) -> Result<PushOutcome, CloudError> {
        let c = self.resolve(account, collection).await?;
        let category = Self::category_of(&c)?;
        let cfg = &self.inner.cfg;
        if writes.is_empty() {
            return Err(CloudError::Invalid {
                field: "writes",
                message: "the batch is empty".into(),
            });
        }
        if let Some(k) = idempotency_key {
            if k.is_empty() || k.len() > 200 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CloudError::Invalid {
                    field: "idempotency_key",
                    message: "an idempotency key is 1 to 200 visible ASCII characters".into(),
                });
            }
        }
        // Every write is checked on its own (the body parsed, then sealed with its summary:
        // most of a push's CPU), spread over the cores for a large batch; then, in order, the
        // checks that look across writes and the files that items stand for.
        let writes: Arc<[Write]> = writes.into();
        let checked = self.check_writes(account, &c, category, &writes).await?;
        let mut seen = std::collections::HashSet::with_capacity(writes.len());
        let mut ops = Vec::with_capacity(writes.len());
        let mut hasher = Sha256::new();
        hasher.update(c.id.as_bytes());
        for (i, (w, checked)) in writes.iter().zip(checked).enumerate() {
            let at = |e: CloudError| e.at(i, &w.id);
            if !seen.insert(w.id.as_str()) {
                return Err(at(CloudError::Invalid {
                    field: "id",
                    message: "the same id appears twice in the batch".into(),
                }));
            }
            let (mut op, text) = checked.map_err(at)?;
            hasher.update([0]);
            hasher.update(w.id.as_bytes());
            hasher.update([0]);
            hasher.update(w.op.as_bytes());
            hasher.update([0]);
            hasher.update(w.base_version.as_deref().unwrap_or("-").as_bytes());
            if let Some(text) = &text {
                hasher.update([0]);
                hasher.update(text.as_bytes());
            }
            // An item that stands for a file counts the file's bytes too.
            if let Some(f) = &op.file_id {
                let file = self
                    .store()
                    .file(account, f)
                    .await?
                    .ok_or_else(|| at(CloudError::UnknownFile(f.clone())))?;
                op.size += file.size;
            }
            ops.push(op);
        }
        let hash = hasher.finalize().to_vec();
        let now = self.now();
        let outcome = self
            .store()
            .apply_batch(
                account,
                &c,
                category.rules(),
                &ops,
                idempotency_key.map(|k| (k, hash.as_slice())),
                cfg.quota_bytes,
                now,
                whole,
            )
            .await
            .map_err(|e| match e {
                // The one unique key a write can break: a drive entry's name in its folder.
                mica_store::StoreError::Conflict => CloudError::NameTaken,
                e => e.into(),
            })?;
        let (results, replayed) = match outcome {
            BatchOutcome::Applied { results, changed } => {
                // The batch queued its photos' files in its own transaction: wake the worker.
                if category == Category::Gallery
                    && ops
                        .iter()
                        .zip(&results)
                        .any(|(op, r)| r.status == OpStatus::Applied && op.file_id.is_some())
                {
                    self.inner.media.notify_one();
                }
                if changed {
                    let version = results
                        .iter()
                        .filter(|r| r.status == OpStatus::Applied)
                        .filter_map(|r| r.version)
                        .max()
                        .unwrap_or(0);
                    self.inner.hub.publish(
                        account,
                        Change {
                            collection: c.id.clone(),
                            category,
                            version,
                        },
                    );
                }
                (results, false)
            }
            BatchOutcome::Replayed(results) => (results, true),
            BatchOutcome::KeyReused => return Err(CloudError::IdempotencyKeyReused),
            BatchOutcome::MissingFile(id) => return Err(CloudError::UnknownFile(id)),
            BatchOutcome::Conflicted(_) => return Err(CloudError::DriveConflict),
            BatchOutcome::TreeRefused { id, problem } => {
                let index = writes.iter().position(|w| w.id == id);
                let e = tree_error(problem);
                return Err(match index {
                    Some(i) => e.at(i, &id),
                    None => e,
                });
            }
            BatchOutcome::QuotaExceeded {
                used,
                quota,
                needed,
            } => {
                return Err(CloudError::QuotaExceeded {
                    used,
                    quota,
                    needed,
                })
            }
        };
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            let current = if r.status == OpStatus::Conflict {
                // On a replay the stored results carry no item: read what is there now.
                let row = match r.current {
                    Some(row) => Some(row),
                    None => self.store().item(account, &c.id, &r.id).await?,
                };
                row.map(|row| self.view(account, &c, category, &row))
                    .transpose()?
            } else {
                None
            };
            out.push(WriteResult {
                id: r.id,
                status: r.status,
                version: r.version.map(version_text),
                deleted: r.deleted,
                current,
            });
        }
        Ok(PushOutcome {
            results: out,
            replayed,
        })
    }

    /// Checks every write of a batch on its own — its id, version and op, and for a put its
    /// body, which is parsed and then sealed with its summary — and returns, in the batch's
    /// order, each one's write and (for a put) the text it stores; over every core for a large
    /// batch.
    async fn check_writes(
        &self,
        account: AccountId,
        collection: &CollectionRow,
        category: Category,
        writes: &Arc<[Write]>,
    ) -> Result<Vec<Result<Checked, CloudError>>, CloudError> {
        let (keys, collection) = (self.inner.keys.clone(), collection.id.clone());
        let max_bytes = self.inner.cfg.max_item_bytes;
        on_cores(self.inner.cores, writes, move |w| {
            check_write(&keys, account, &collection, category, max_bytes, w)
        })
        .await
    }

    /// A page of the recycle bin, newest first (only what is still within the plan's
    /// retention): at most `limit` entries after `cursor` (the `next` of the page before).
    pub async fn recycle_bin(
        &self,
        account: AccountId,
        category: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<BinPage, CloudError> {
        let category = match category {
            None => None,
            Some(c) => Some(Category::parse(c).ok_or(CloudError::UnknownCategory)?),
        };
        let after = cursor.map(media::parse_cursor).transpose()?;
        // Every bin entry has its time: a cursor without one is not a bin cursor.
        if after.as_ref().is_some_and(|a| a.at.is_none()) {
            return Err(CloudError::Invalid {
                field: "cursor",
                message: "not a cursor this server gave: pass the `next` of the page before".into(),
            });
        }
        let limit = limit.clamp(1, MAX_BIN_PAGE);
        let plan = self.store().cloud_account(account).await?.plan;
        let keep = self.retention(&plan);
        let since = self.now().minus(keep);
        // One more than the page, to know whether another follows.
        let mut rows = self
            .store()
            .recycle_bin(
                account,
                category.map(Category::as_str),
                since,
                after.as_ref(),
                i64::try_from(limit + 1).unwrap_or(i64::MAX),
            )
            .await?;
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| {
                media::cursor_text(&TimelineCursor {
                    at: Some(r.deleted_at.millis()),
                    id: r.id.clone(),
                })
            })
        } else {
            None
        };
        let entries = rows
            .into_iter()
            .map(|r| {
                let summary = match &r.summary {
                    Some(s) => self
                        .inner
                        .keys
                        .open(
                            &Self::aad("summary", account, &r.collection_id, &r.item_id),
                            s,
                        )
                        .map_err(|e| CloudError::Internal(format!("bin {}: {e}", r.id)))?,
                    None => String::new(),
                };
                Ok(BinEntry {
                    category: Category::parse(&r.kind)
                        .ok_or_else(|| CloudError::Internal(format!("bin kind {}", r.kind)))?,
                    summary,
                    expires_at: r.deleted_at.plus(keep),
                    id: r.id,
                    collection_id: r.collection_id,
                    item_id: r.item_id,
                    size: r.size,
                    deleted_at: r.deleted_at,
                })
            })
            .collect::<Result<_, CloudError>>()?;
        Ok(BinPage { entries, next })
    }

    /// Puts back everything of a category (every category when `None`) deleted at `since` or
    /// later and still in the bin — a sync gone wrong that deleted a whole address book, say —
    /// newest deletions first, at most [`MAX_BULK_RESTORE`] entries a call; `cursor` (the
    /// `next` of the call before) goes on where it stopped, past what was kept. Each entry is
    /// its own restore: one whose place is taken again stays in the bin, and the rest still
    /// come back. A drive entry whose folder stayed in the bin (kept, or deleted before
    /// `since`) comes back at the top level rather than out of reach.
    pub async fn restore_since(
        &self,
        account: AccountId,
        category: Option<&str>,
        since: Timestamp,
        cursor: Option<&str>,
    ) -> Result<BulkRestore, CloudError> {
        let mut out = BulkRestore::default();
        let mut cursor = cursor.map(str::to_owned);
        let mut attempts = 0;
        let mut drive_entries = Vec::new();
        'pages: loop {
            // Restored entries leave the bin; the cursor is strictly after the page's last
            // entry, so neither they nor the kept ones are met twice.
            let page = self
                .recycle_bin(account, category, cursor.as_deref(), MAX_BIN_PAGE)
                .await?;
            for e in &page.entries {
                if e.deleted_at < since {
                    break 'pages;
                }
                if attempts == MAX_BULK_RESTORE {
                    out.more = true;
                    break 'pages;
                }
                attempts += 1;
                out.next = Some(media::cursor_text(&TimelineCursor {
                    at: Some(e.deleted_at.millis()),
                    id: e.id.clone(),
                }));
                match self.restore_entry(account, &e.id).await {
                    Ok((_, contents)) => {
                        out.restored += 1 + contents;
                        if e.category == Category::Drive {
                            drive_entries.push((e.collection_id.clone(), e.item_id.clone()));
                        }
                    }
                    Err(CloudError::RestoreConflict) => out.kept += 1,
                    // Came back with its folder, earlier in this call.
                    Err(CloudError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        if !out.more {
            out.next = None;
        }
        // A drive entry restored before its folder came up, whose folder then stayed in the
        // bin: nothing more comes back in this call, so it moves to the top level now.
        for (collection, id) in drive_entries {
            let c = self.resolve(account, &collection).await?;
            if let Err(e) = self
                .drive_rehome(account, &c, &id, Timestamp(i64::MAX))
                .await
            {
                if !matches!(e, CloudError::NotFound) {
                    tracing::warn!(error = %e, "a restored drive entry stays in its folder");
                }
            }
        }
        Ok(out)
    }

    /// Puts a deleted item back; every device gets it on its next pull. A drive folder brings
    /// back what was deleted with it.
    pub async fn restore(&self, account: AccountId, bin_id: &str) -> Result<ItemView, CloudError> {
        Ok(self.restore_entry(account, bin_id).await?.0)
    }

    /// [`Cloud::restore`], and how many entries came back with a folder.
    async fn restore_entry(
        &self,
        account: AccountId,
        bin_id: &str,
    ) -> Result<(ItemView, u64), CloudError> {
        check_id("id", bin_id, 64)?;
        let plan = self.store().cloud_account(account).await?.plan;
        let since = self.now().minus(self.retention(&plan));
        match self
            .store()
            .restore_from_bin(account, bin_id, since, self.now())
            .await?
        {
            RestoreOutcome::NotFound => Err(CloudError::NotFound),
            RestoreOutcome::Occupied => Err(CloudError::RestoreConflict),
            RestoreOutcome::Restored {
                collection_id,
                item_id,
                version,
                deleted_at,
            } => {
                let c = self.resolve(account, &collection_id).await?;
                let category = Self::category_of(&c)?;
                // What devices are told to pull up to: a folder's contents come after it.
                let (mut newest, mut contents) = (version, 0);
                // The restore has committed: a drive entry that cannot be moved out of a gone
                // folder is left where it is (and said so in the log), not reported as failed.
                if category == Category::Drive {
                    if let Err(e) = self.drive_rehome(account, &c, &item_id, since).await {
                        tracing::warn!(error = %e, "a restored drive entry stays in its gone folder");
                    }
                    // A folder brings back what was deleted with it; what could not come back
                    // stays in the bin (the folder's own restore has committed).
                    match self
                        .drive_restore_contents(account, &c, &item_id, deleted_at, since)
                        .await
                    {
                        Ok((last, n)) => {
                            newest = newest.max(last);
                            contents = n;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "a restored folder's contents stay in the bin");
                        }
                    }
                }
                // The bin keeps an item's body, not what is indexed from it (a contact's or an
                // event's uid, an event's or a photo's time, a photo's albums): index it again
                // from the body. A photo is placed on the timeline even if its body no longer
                // reads (undated).
                let view = self.item(account, &collection_id, &item_id).await?;
                let rules = category.rules();
                let indexed = view
                    .body
                    .as_ref()
                    .and_then(|body| category::prepare(category, body).ok());
                if indexed.is_some() || rules.media {
                    let p = indexed.unwrap_or_default();
                    let albums: Vec<mica_store::Album> = p
                        .albums
                        .iter()
                        .map(|a| media::album(&self.inner.keys, account, &collection_id, a))
                        .collect();
                    self.store()
                        .reindex_item(
                            account,
                            &collection_id,
                            &item_id,
                            version,
                            rules,
                            p.uid.as_deref(),
                            p.starts_at,
                            p.ends_at,
                            &albums,
                        )
                        .await?;
                }
                self.inner.hub.publish(
                    account,
                    Change {
                        collection: c.id.clone(),
                        category,
                        version: newest,
                    },
                );
                Ok((view, contents))
            }
        }
    }

    /// Deletes a recycle-bin entry for good, freeing its space.
    pub async fn purge(&self, account: AccountId, bin_id: &str) -> Result<(), CloudError> {
        check_id("id", bin_id, 64)?;
        if self.store().purge_bin(account, Some(bin_id)).await? == 0 {
            return Err(CloudError::NotFound);
        }
        // Files only the purged entry referenced go now.
        self.collect_account(account).await?;
        Ok(())
    }

    /// Empties the recycle bin; returns how many entries went.
    pub async fn empty_bin(&self, account: AccountId) -> Result<u64, CloudError> {
        let n = self.store().purge_bin(account, None).await?;
        self.collect_account(account).await?;
        Ok(n)
    }

    /// The account's storage without a plan: the operator's quota for it, or the server's.
    pub async fn base_quota(&self, account: AccountId) -> Result<i64, CloudError> {
        let a = self.store().cloud_account(account).await?;
        Ok(a.quota_bytes.unwrap_or(self.inner.cfg.quota_bytes))
    }

    pub async fn usage(&self, account: AccountId) -> Result<Usage, CloudError> {
        let a = self.store().cloud_account(account).await?;
        let categories = self.store().cloud_usage(account).await?;
        Ok(Usage {
            quota_bytes: a.quota(self.inner.cfg.quota_bytes),
            used_bytes: a.used_bytes,
            plan: a.plan,
            categories,
        })
    }

    /// The categories a device (session) syncs: all of them until it chooses.
    pub async fn device_categories(
        &self,
        account: AccountId,
        session: &SessionId,
    ) -> Result<Vec<Category>, CloudError> {
        Ok(
            match self.store().device_categories(account, &session.0).await? {
                None => Category::ALL.to_vec(),
                Some(list) => list.split(',').filter_map(Category::parse).collect(),
            },
        )
    }

    pub async fn set_device_categories(
        &self,
        account: AccountId,
        session: &SessionId,
        categories: &[String],
    ) -> Result<Vec<Category>, CloudError> {
        let mut out = Vec::new();
        for c in categories {
            let c = Category::parse(c).ok_or(CloudError::UnknownCategory)?;
            if !out.contains(&c) {
                out.push(c);
            }
        }
        let list: Vec<&str> = out.iter().map(|c| c.as_str()).collect();
        self.store()
            .set_device_categories(account, &session.0, &list.join(","), self.now())
            .await?;
        Ok(out)
    }

    /// Purges what expired: recycle-bin entries past their plan's retention (freeing their
    /// space), tombstones past `tombstone_days`, and remembered batches. Returns the counts.
    pub async fn maintenance(&self) -> Result<(u64, u64, u64), CloudError> {
        let now = self.now();
        let mut bin = 0;
        for plan in ["free", "premium"] {
            let cutoff = now.minus(self.retention(plan));
            for account in self.store().accounts_with_expired_bin(plan, cutoff).await? {
                bin += self.store().purge_expired_bin(account, cutoff).await?;
            }
        }
        let tombstones = self
            .store()
            .purge_tombstones(
                now.minus(Duration::from_secs(self.inner.cfg.tombstone_days * 86_400)),
            )
            .await?;
        let batches = self.store().purge_batches(now.minus(BATCH_MEMORY)).await?;
        let gc = self.collect_garbage().await?;
        self.storage_notices().await?;
        if bin + tombstones + batches + gc.files_removed + gc.chunks_removed + gc.uploads_expired
            > 0
        {
            tracing::info!(bin, tombstones, batches, ?gc, "cloud maintenance purged");
        }
        Ok((bin, tombstones, batches))
    }

    /// Tells owners whose storage reached 90 % of their quota, and again those whose storage
    /// is full, once each until their usage falls below 80 % (a claim in `cloud_accounts`, so
    /// two nodes' maintenance tell once). Run with the maintenance, every few minutes.
    pub async fn storage_notices(&self) -> Result<u64, CloudError> {
        let default_quota = self.inner.cfg.quota_bytes;
        self.store()
            .reset_storage_notices(default_quota, 80)
            .await?;
        let Some(notices) = self.inner.notices.get() else {
            return Ok(0);
        };
        let mut told = 0;
        for level in [100, 90] {
            loop {
                let due = self
                    .store()
                    .claim_storage_notices(level, default_quota, 100)
                    .await?;
                let n = due.len();
                for (account, used, quota) in due {
                    let (subject, text) = storage_notice(level, used, quota);
                    notices.tell(account, subject, text).await;
                    told += 1;
                }
                if n < 100 {
                    break;
                }
            }
        }
        Ok(told)
    }

    /// Writes the account's cloud data into its data export: every collection's live items
    /// (contacts as one vCard file per address book, events as an iCalendar file each, the
    /// rest as a JSON array per collection) and the original of every file an item stands for
    /// (drive, gallery, recordings), streamed from the blob store. Items are read a page at a
    /// time in the order of their ids, so each is written once, as it was when its page was
    /// read, and an account of any size takes a page of memory (and a path per original).
    pub async fn export_into<W: ArchiveWriter>(
        &self,
        account: AccountId,
        out: &W,
    ) -> Result<(), CloudError> {
        let out_err = |e: String| CloudError::Internal(format!("export: {e}"));
        for c in self.store().collections(account).await? {
            let category = Self::category_of(&c)?;
            let mut after = String::new();
            match category.format() {
                category::Format::VCard => {
                    let Some(mut rows) = self.export_page(account, &c.id, &mut after).await? else {
                        continue;
                    };
                    let mut entry = Entry::start(out, format!("contacts/{}.vcf", c.id))
                        .await
                        .map_err(out_err)?;
                    loop {
                        for r in &rows {
                            let item = self.view(account, &c, category, r)?;
                            let text = item.body.as_ref().and_then(|b| b.as_str());
                            let text = text.unwrap_or_default();
                            entry.write(text.as_bytes()).await.map_err(out_err)?;
                            if !text.ends_with('\n') {
                                entry.write(b"\r\n").await.map_err(out_err)?;
                            }
                        }
                        match self.export_page(account, &c.id, &mut after).await? {
                            Some(next) => rows = next,
                            None => break,
                        }
                    }
                    entry.finish().await.map_err(out_err)?;
                }
                category::Format::ICalendar => {
                    while let Some(rows) = self.export_page(account, &c.id, &mut after).await? {
                        for r in &rows {
                            let item = self.view(account, &c, category, r)?;
                            let text = item.body.as_ref().and_then(|b| b.as_str());
                            out.file(
                                format!("calendar/{}/{}.ics", c.id, item.id),
                                text.unwrap_or_default().as_bytes().to_vec(),
                            )
                            .await
                            .map_err(out_err)?;
                        }
                    }
                }
                category::Format::Json => {
                    let mut names = Originals::new(category, &c.id);
                    if category == Category::Drive {
                        // A file's path takes its folders': all of them first.
                        while let Some(rows) = self.export_page(account, &c.id, &mut after).await? {
                            for r in rows.iter().filter(|r| r.file_id.is_none()) {
                                names.learn_folder(&self.view(account, &c, category, r)?);
                            }
                        }
                        after.clear();
                    }
                    let Some(mut rows) = self.export_page(account, &c.id, &mut after).await? else {
                        continue;
                    };
                    let path = format!("{}/{}.json", category.as_str(), c.id);
                    let mut array = JsonArray::start(out, path).await.map_err(out_err)?;
                    let mut originals = Vec::new();
                    loop {
                        for r in &rows {
                            let item = self.view(account, &c, category, r)?;
                            let mut v = serde_json::json!({
                                "id": item.id,
                                "modified_at": item.modified_at.to_rfc3339(),
                            });
                            if let Some(file_id) = &r.file_id {
                                let path = names.place(&item);
                                v["original"] = serde_json::Value::String(path.clone());
                                originals.push((path, file_id.clone()));
                            }
                            v["item"] = item.body.unwrap_or_default();
                            array.push(&v).await.map_err(out_err)?;
                        }
                        match self.export_page(account, &c.id, &mut after).await? {
                            Some(next) => rows = next,
                            None => break,
                        }
                    }
                    array.finish().await.map_err(out_err)?;
                    originals.sort();
                    for (path, file_id) in originals {
                        self.export_original(account, out, path, &file_id).await?;
                    }
                }
            }
        }
        self.export_backups(account, out).await
    }

    /// The device backups: `backups.json` (each backup, its device and parts, each part saying
    /// where its bytes are) and the parts' bytes once per content, `backups/parts/<content id>`.
    async fn export_backups<W: ArchiveWriter>(
        &self,
        account: AccountId,
        out: &W,
    ) -> Result<(), CloudError> {
        let out_err = |e: String| CloudError::Internal(format!("export: {e}"));
        let list = self.backups(account).await?;
        if list.is_empty() {
            return Ok(());
        }
        let mut files = std::collections::BTreeMap::new();
        let mut array = JsonArray::start(out, "backups.json".into())
            .await
            .map_err(out_err)?;
        for b in list {
            let detail = match self.backup(account, &b.id).await {
                Ok(d) => d,
                // Deleted while the archive was built.
                Err(CloudError::NotFound) => continue,
                Err(e) => return Err(e),
            };
            let mut v = serde_json::to_value(&detail.backup)
                .map_err(|e| CloudError::Internal(e.to_string()))?;
            v["parts"] = detail
                .part_list
                .iter()
                .map(|p| {
                    let path = format!("backups/parts/{}", p.content_hash);
                    files.insert(path.clone(), p.file_id.clone());
                    serde_json::json!({ "name": p.name, "kind": p.kind, "size": p.size,
                                        "content_hash": p.content_hash, "original": path })
                })
                .collect();
            array.push(&v).await.map_err(out_err)?;
        }
        array.finish().await.map_err(out_err)?;
        for (path, file_id) in files {
            self.export_original(account, out, path, &file_id).await?;
        }
        Ok(())
    }

    /// The next page of a collection's live items for the export, after the item `after`
    /// (moved to this page's last); `None` past the last.
    async fn export_page(
        &self,
        account: AccountId,
        collection: &str,
        after: &mut String,
    ) -> Result<Option<Vec<ItemRow>>, CloudError> {
        let rows = self
            .store()
            .live_items_page(account, collection, after, MAX_PAGE)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        after.clone_from(&last.id);
        Ok(Some(rows))
    }

    /// Streams an original into the export as it is stored (photos and videos are
    /// compressed already), a chunk at a time.
    async fn export_original<W: ArchiveWriter>(
        &self,
        account: AccountId,
        out: &W,
        path: String,
        file_id: &str,
    ) -> Result<(), CloudError> {
        use futures_util::StreamExt;
        let chunks = match self.read_file(account, file_id, None).await {
            Ok((_, chunks)) => chunks,
            // Replaced and collected since its item was read: not the account's any more.
            Err(CloudError::NotFound) => {
                tracing::info!(%account, "export: a file went while it was built");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let fail = |e: String| CloudError::Internal(format!("export: {path}: {e}"));
        out.start(path.clone(), false).await.map_err(fail)?;
        let mut chunks = std::pin::pin!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| fail(e.to_string()))?;
            out.data(chunk.to_vec()).await.map_err(fail)?;
        }
        Ok(())
    }

    /// Proves that recorded usage equals the bytes stored; returns the disagreements.
    pub async fn check_usage(&self) -> Result<Vec<mica_store::UsageMismatch>, CloudError> {
        Ok(self.store().check_usage().await?)
    }
}

/// `f` of every element of `items`, in order. A long input is cut into one run per core (at
/// least [`RUN_MIN`] elements each): the runs after the first go to blocking threads while this
/// task does the first. For the CPU-heavy, per-item halves of a push (parsing and sealing) and
/// of a pull (opening), which would otherwise use one core while the others wait.
async fn on_cores<T, R, F>(cores: usize, items: &Arc<[T]>, f: F) -> Result<Vec<R>, CloudError>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(&T) -> R + Clone + Send + 'static,
{
    let runs = cores.min(items.len().div_ceil(RUN_MIN)).max(1);
    let per_run = items.len().div_ceil(runs);
    let mut others = Vec::with_capacity(runs - 1);
    for run in 1..runs {
        let (items, f) = (items.clone(), f.clone());
        let range = run * per_run..((run + 1) * per_run).min(items.len());
        others.push(tokio::task::spawn_blocking(move || {
            items[range].iter().map(&f).collect::<Vec<_>>()
        }));
    }
    let mut out: Vec<R> = items[..per_run.min(items.len())].iter().map(&f).collect();
    for run in others {
        out.extend(
            run.await
                .map_err(|e| CloudError::Internal(format!("a run of work on another core: {e}")))?,
        );
    }
    Ok(out)
}

/// Below this many elements a run is not worth a thread.
const RUN_MIN: usize = 64;

/// An item as devices see it: its body opened (and, for the JSON categories, parsed).
fn view_row(
    keys: &Keys,
    account: AccountId,
    collection: &str,
    category: Category,
    row: &ItemRow,
) -> Result<ItemView, CloudError> {
    let body = match (&row.body, row.deleted_at) {
        (Some(sealed), None) => {
            let text = keys
                .open(&Cloud::aad("item", account, collection, &row.id), sealed)
                .map_err(|e| CloudError::Internal(format!("item {}: {e}", row.id)))?;
            Some(match category.format() {
                category::Format::Json => serde_json::from_str(&text)
                    .map_err(|e| CloudError::Internal(format!("item {}: {e}", row.id)))?,
                _ => serde_json::Value::String(text),
            })
        }
        _ => None,
    };
    Ok(ItemView {
        id: row.id.clone(),
        version: version_text(row.seq),
        deleted: row.deleted_at.is_some(),
        modified_at: row.modified_at,
        body,
    })
}

/// A write that passed its own checks, and for a put the text it stores (part of the batch's
/// idempotency hash).
type Checked = (ItemWrite, Option<String>);

/// The checks of one write that need nothing but the write: its id, base version and op; for a
/// put, its body validated for the category (within `max_bytes`) and sealed, with its summary.
/// `size` counts the text; a file's bytes are added by the caller.
fn check_write(
    keys: &Keys,
    account: AccountId,
    collection: &str,
    category: Category,
    max_bytes: usize,
    w: &Write,
) -> Result<Checked, CloudError> {
    check_id("id", &w.id, 200)?;
    let base = match &w.base_version {
        None => None,
        Some(v) => Some(v.parse::<i64>().map_err(|_| CloudError::Invalid {
            field: "base_version",
            message: "not a version this server gave out".into(),
        })?),
    };
    match w.op.as_str() {
        "put" => {
            let raw = w.body.as_ref().ok_or_else(|| CloudError::Invalid {
                field: "body",
                message: "a put needs a body".into(),
            })?;
            // Escaping can make JSON up to six times its text (`\u0000`): past that, the text
            // is too large whatever it holds, and it is not parsed at all.
            if raw.get().len() > max_bytes.saturating_mul(6).saturating_add(1024) {
                return Err(CloudError::ItemTooLarge(max_bytes));
            }
            let body: serde_json::Value =
                serde_json::from_str(raw.get()).map_err(|e| CloudError::Invalid {
                    field: "body",
                    message: format!("not JSON: {e}"),
                })?;
            let p = category::prepare(category, &body)?;
            if p.text.len() > max_bytes {
                return Err(CloudError::ItemTooLarge(max_bytes));
            }
            let op = ItemWrite {
                id: w.id.clone(),
                op: WriteOp::Put,
                base,
                body: Some(keys.seal(&Cloud::aad("item", account, collection, &w.id), &p.text)),
                summary: Some(keys.seal(
                    &Cloud::aad("summary", account, collection, &w.id),
                    &p.summary,
                )),
                size: i64::try_from(p.text.len()).unwrap_or(i64::MAX),
                uid: p.uid,
                starts_at: p.starts_at,
                ends_at: p.ends_at,
                file_id: p.file_id,
                path_key: p.path_key,
                albums: p
                    .albums
                    .iter()
                    .map(|a| media::album(keys, account, collection, a))
                    .collect(),
            };
            Ok((op, Some(p.text)))
        }
        "delete" => {
            if w.body.is_some() {
                return Err(CloudError::Invalid {
                    field: "body",
                    message: "a delete has no body".into(),
                });
            }
            if base.is_none() && !category.append_only() {
                return Err(CloudError::Invalid {
                    field: "base_version",
                    message: "say which version you are deleting, so a newer edit from another device is not lost".into(),
                });
            }
            let op = ItemWrite {
                id: w.id.clone(),
                op: WriteOp::Delete,
                base,
                body: None,
                summary: None,
                size: 0,
                uid: None,
                starts_at: None,
                ends_at: None,
                file_id: None,
                path_key: None,
                albums: Vec::new(),
            };
            Ok((op, None))
        }
        _ => Err(CloudError::Invalid {
            field: "op",
            message: "op is put or delete".into(),
        }),
    }
}

fn default_name(c: Category) -> &'static str {
    match c {
        Category::Contacts => "Contacts",
        Category::Calendar => "Calendar",
        Category::Notes => "Notes",
        Category::Messages => "Messages",
        Category::Calls => "Call history",
        Category::Bookmarks => "Bookmarks",
        Category::BrowserHistory => "Browser history",
        Category::Wifi => "Wi-Fi networks",
        Category::Settings => "App settings",
        Category::Gallery => "Gallery",
        Category::Recordings => "Recordings",
        Category::Drive => "Drive",
    }
}

/// Usage category of the recycle bin, for clients.
pub const RECYCLE_BIN: &str = BIN_CATEGORY;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_on_cores_keeps_the_order() -> Result<(), CloudError> {
        for (cores, n) in [(1, 500), (2, 500), (3, 1000), (8, 100), (4, 63), (2, 0)] {
            let items: Arc<[u64]> = (0..n).collect::<Vec<u64>>().into();
            let out = on_cores(cores, &items, |x| x * 3 + 1).await?;
            let expected: Vec<u64> = (0..n).map(|x| x * 3 + 1).collect();
            assert_eq!(out, expected, "{cores} cores, {n} items");
        }
        Ok(())
    }

    fn view(id: &str, body: serde_json::Value) -> ItemView {
        ItemView {
            id: id.into(),
            version: "1".into(),
            deleted: false,
            modified_at: mica_core::Timestamp(0),
            body: Some(body),
        }
    }

    #[test]
    fn originals_get_safe_distinct_paths_under_their_folders() {
        let items = vec![
            (
                view("a", serde_json::json!({"kind": "folder", "name": "Trips"})),
                None,
            ),
            (
                view(
                    "b",
                    serde_json::json!({"kind": "folder", "name": "..", "parent": "a"}),
                ),
                None,
            ),
            (
                view(
                    "c",
                    serde_json::json!({"kind": "file", "name": "x.txt", "parent": "b"}),
                ),
                Some("f1".to_owned()),
            ),
            (
                view(
                    "d",
                    serde_json::json!({"kind": "file", "name": "a/b\u{7}.txt"}),
                ),
                Some("f2".to_owned()),
            ),
            (
                view(
                    "e",
                    serde_json::json!({"kind": "file", "name": "x.txt", "parent": "b"}),
                ),
                Some("f3".to_owned()),
            ),
            (
                view(
                    "g",
                    serde_json::json!({"kind": "file", "name": "noext", "parent": "b"}),
                ),
                Some("f4".to_owned()),
            ),
            (
                view(
                    "h",
                    serde_json::json!({"kind": "file", "name": "noext", "parent": "b"}),
                ),
                Some("f5".to_owned()),
            ),
            (
                view(
                    "l",
                    serde_json::json!({"kind": "file", "name": "é".repeat(40_000)}),
                ),
                Some("f6".to_owned()),
            ),
        ];
        let mut names = Originals::new(Category::Drive, "drive");
        for (i, _) in &items {
            names.learn_folder(i);
        }
        let o: std::collections::HashMap<&str, (String, &str)> = items
            .iter()
            .filter_map(|(i, f)| {
                let f = f.as_deref()?;
                Some((i.id.as_str(), (names.place(i), f)))
            })
            .collect();
        let path = |id: &str| o.get(id).map(|(p, _)| p.as_str());
        assert_eq!(path("c"), Some("files/drive/drive/Trips/_/x.txt"));
        assert_eq!(path("e"), Some("files/drive/drive/Trips/_/x (2).txt"));
        assert_eq!(path("d"), Some("files/drive/drive/a_b_.txt"));
        assert_eq!(path("g"), Some("files/drive/drive/Trips/_/noext"));
        assert_eq!(path("h"), Some("files/drive/drive/Trips/_/noext (2)"));
        assert_eq!(o.get("c").map(|(_, f)| *f), Some("f1"));
        assert!(path("a").is_none(), "a folder has no original");
        let long = path("l").unwrap_or_default();
        assert_eq!(long, format!("files/drive/drive/{}", "é".repeat(100)));
    }
}
