//! Mica's storage.
//!
//! One implementation of every query, run through sqlx's `Any` driver against either SQLite (the
//! embedded default) or PostgreSQL (scale-out). Queries use `$N` placeholders, which both engines
//! accept (statements built for many rows use `Store::mark`: `?` on SQLite); the two differ
//! otherwise only in their migration files (`migrations/{sqlite,postgres}`), where column types
//! are spelled per engine.
//!
//! Architecture invariants:
//! - only this crate contains SQL or knows which engine it talks to;
//! - every multi-row change is one transaction; conditional updates (`… WHERE used_at IS NULL`)
//!   make races between two requests resolve to exactly one winner;
//! - personal data arrives here already sealed: the store never sees a plaintext email or phone.
//!
//! On SQLite all writes go through a single-connection pool, so writers queue in-process instead of
//! failing with `SQLITE_BUSY`; reads use a separate pool and WAL snapshots. Reads of whole pages
//! (the sync feed) go through read-only connections of SQLite's own C API on a blocking thread
//! (see [`PageReaders`]); the SQL is the same on both engines.

mod account_recovery;
mod accounts;
mod app_passwords;
mod backups;
mod cloud;
mod codes;
mod commerce;
mod devices;
mod exports;
mod feedback;
mod files;
mod jobs;
mod link_requests;
mod media;
mod migrate;
mod notices;
mod oidc;
mod operator_log;
mod passkeys;
mod profile;
mod recovery;
mod security;
mod sessions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use account_recovery::{
    NewRecoveryRequest, RecoveryCompleted, RecoveryCompletion, RecoveryRequestRow,
    RecoveryStateChange, RECOVERY_ANY, RECOVERY_CLOSED, RECOVERY_FILED, RECOVERY_OPEN,
};
pub use accounts::{AccountRow, LookupBy, NewAccount};
pub use app_passwords::AppPasswordRow;
pub use backups::{
    BackupOutcome, BackupPartRow, BackupRow, NewBackup, NewBackupPart, BACKUPS_CATEGORY,
};
pub use cloud::{
    BatchOutcome, BinRow, CategoryRules, Changes, CloudAccount, CollectionRow, ItemRow, ItemWrite,
    OpResult, OpStatus, RestoreOutcome, TreeProblem, UsageMismatch, WriteOp, BIN_CATEGORY,
    MAX_TREE_DEPTH,
};
pub use codes::{CodeRow, NewCode};
pub use commerce::{
    BuyOutcome, Credit, CreditOutcome, LedgerRow, NewPurchase, NewTheme, PlanChange, PurchaseRow,
    RenewOutcome, Renewal, SubscriptionRow, ThemeOutcome, ThemeRow,
};
pub use devices::{
    AckOutcome, CommandRow, DeviceRow, FindOutcome, FinishOutcome, LinkOutcome, LocationRow,
    NewCommand, NewDevice,
};
pub use exports::ExportRow;
pub use feedback::{NewAttachment, NewReport, ReportRow};
pub use files::{
    FileChunk, FileRow, GcReport, NewPart, NewUpload, ProgressOutcome, UploadPosition, UploadRow,
    CHUNK_BYTES, UPLOADS_CATEGORY,
};
pub use jobs::{
    AccountTable, JobRow, ACCOUNT_DATA, JOB_DELETE_ACCOUNT, JOB_EXPORT, OUTLIVES_ACCOUNTS,
};
pub use link_requests::{LinkPoll, LinkRequestRow, NewLinkRequest};
pub use media::{Album, AlbumRow, ItemAlbums, MediaDone, MediaRow, TimelineCursor, TimelineRow};
pub use notices::{NewNotice, NoticeRow};
pub use oidc::{
    CodeOutcome, DeviceCodeRow, DevicePoll, OidcClientRow, OidcCodeRow, OidcGrantRow, OidcKeyRow,
};
pub use operator_log::{OperatorEntry, OperatorLogRow};
pub use passkeys::{PasskeyInsert, PasskeyRow, WebauthnChallengeRow};
pub use profile::ProfileRow;
pub use recovery::RecoveryFactorRow;
pub use security::{SecurityEventRow, TotpRow};
pub use sessions::{LoginEventRow, NewSession, OidcSession, RefreshOutcome, SessionRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a record with the same unique key already exists")]
    Conflict,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}: use sqlite:PATH or postgres://…")]
    UnsupportedUrl(String),
    /// A text value the database cannot hold (PostgreSQL's text takes no NUL). The domain
    /// crates refuse such values first; this keeps one they missed a 4xx rather than a 500.
    #[error("a text field holds a character that cannot be stored (such as NUL)")]
    UnstorableText,
    /// What the write refers to is no longer there (a foreign key found no row): a device
    /// removed, an account deleted, between the request's checks and its write. The domain
    /// crates answer it as not found, not as a server fault.
    #[error("what this refers to no longer exists")]
    Gone,
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("database error reading a page: {0}")]
    Page(#[source] rusqlite::Error),
    #[error("migration {version} failed: {source}")]
    Migration {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::Gone,
            // character_not_in_repertoire, untranslatable_character
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22021" | "22P05")) =>
            {
                StoreError::UnstorableText
            }
            _ => StoreError::Database(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The database handle every domain crate uses.
#[derive(Clone)]
pub struct Store {
    writer: AnyPool,
    reader: AnyPool,
    /// SQLite: reads that return pages of rows (the sync feed) — see [`PageReaders`].
    pages: Option<std::sync::Arc<PageReaders>>,
    backend: Backend,
    /// PostgreSQL's URL, for the listener of wake-ups between nodes (never printed).
    pg_url: Option<std::sync::Arc<str>>,
    /// SQLite: the WAL checkpointer runs while a clone of this lives.
    _checkpointer: Option<std::sync::Arc<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Pool sizing; defaults suit a small machine.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl Store {
    /// Connects to `url` (`sqlite:PATH` — created when missing — or `postgres://…`).
    /// Does not run migrations: call [`Store::migrate`].
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        match backend {
            Backend::Sqlite => {
                let url = if url.contains('?') {
                    url.to_owned()
                } else {
                    format!("{url}?mode=rwc")
                };
                let conn = AnyConnectOptions::from_str(&url)?;
                // No ping before each use (`test_before_acquire`): a SQLite connection is a
                // thread of this process, not a socket that can go stale, and the ping is a
                // round trip to that thread in front of every statement.
                let writer = pool_options()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .acquire_timeout(opts.acquire_timeout.max(Duration::from_secs(30)))
                    .after_connect(sqlite_writer_pragmas)
                    .connect_with(conn.clone())
                    .await?;
                // WAL lets readers proceed while the single writer commits; it is persistent.
                writer.execute("PRAGMA journal_mode = WAL").await?;
                let reader = pool_options()
                    .max_connections(opts.max_connections.clamp(1, 8))
                    .test_before_acquire(false)
                    .acquire_timeout(opts.acquire_timeout)
                    .after_connect(sqlite_pragmas)
                    .connect_with(conn)
                    .await?;
                let pages = PageReaders {
                    path: sqlx::sqlite::SqliteConnectOptions::from_str(&url)?
                        .get_filename()
                        .to_owned(),
                    idle: std::sync::Mutex::new(Vec::new()),
                };
                let alive = std::sync::Arc::new(());
                tokio::spawn(checkpointer(
                    reader.clone(),
                    std::sync::Arc::downgrade(&alive),
                ));
                Ok(Store {
                    writer,
                    reader,
                    pages: Some(std::sync::Arc::new(pages)),
                    backend,
                    pg_url: None,
                    _checkpointer: Some(alive),
                })
            }
            Backend::Postgres => {
                let pool = pool_options()
                    .max_connections(opts.max_connections)
                    .acquire_timeout(opts.acquire_timeout)
                    .connect(url)
                    .await?;
                Ok(Store {
                    writer: pool.clone(),
                    reader: pool,
                    pages: None,
                    backend,
                    pg_url: Some(url.into()),
                    _checkpointer: None,
                })
            }
        }
    }

    /// The connection pools, for the operator's metrics: name, connections open, idle ones.
    pub fn pool_stats(&self) -> [(&'static str, u32, usize); 2] {
        [
            ("writer", self.writer.size(), self.writer.num_idle()),
            ("reader", self.reader.size(), self.reader.num_idle()),
        ]
    }

    /// Work waiting, for the operator's metrics: jobs queued per kind, and account recovery
    /// requests per open state (`in_review` ones wait for an operator).
    pub async fn backlog(&self) -> Result<Vec<(String, String, i64)>> {
        let open = account_recovery::in_list(RECOVERY_OPEN, 1);
        let sql = format!(
            "SELECT 'job' AS what, kind AS name, COUNT(*) AS n FROM jobs GROUP BY kind \
             UNION ALL SELECT 'recovery' AS what, state AS name, COUNT(*) AS n \
             FROM recovery_requests WHERE state IN ({open}) GROUP BY state"
        );
        let mut q = sqlx::query(&sql);
        for s in RECOVERY_OPEN {
            q = q.bind(*s);
        }
        let rows = q.fetch_all(&self.reader).await?;
        rows.iter()
            .map(|r| {
                use sqlx::Row;
                Ok((r.try_get("what")?, r.try_get("name")?, r.try_get("n")?))
            })
            .collect()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Brings the schema up to date. Safe to run on every start and from several nodes at once
    /// (PostgreSQL serialises them with an advisory lock).
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        migrate::run(&self.writer, self.backend).await
    }

    /// A cheap round trip, for readiness probes.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// Every table of the schema (except the migration ledger), for integrity and deletion checks.
    pub async fn table_names(&self) -> Result<Vec<String>> {
        use sqlx::Row;
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
                 AND name <> 'schema_migrations' ORDER BY name"
            }
            Backend::Postgres => {
                "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
                 AND table_name <> 'schema_migrations' ORDER BY table_name"
            }
        };
        let rows = sqlx::query(sql).fetch_all(&self.reader).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("name").map_err(StoreError::from))
            .collect()
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        if let Some(pages) = &self.pages {
            pages.close();
        }
    }
}

type ConnectFuture<'c> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'c>>;

/// Per-connection SQLite settings: wait for locks instead of failing, enforce foreign keys, and
/// sync at WAL checkpoints (a crash or power cut leaves the old state or the new one, never a torn one).
fn sqlite_pragmas(
    conn: &mut sqlx::AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> ConnectFuture<'_> {
    Box::pin(async move {
        conn.execute(
            "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
        )
        .await?;
        Ok(())
    })
}

/// The writer's settings: those of every connection, and no checkpoint at commit — the
/// [`checkpointer`] does them, so a commit never waits for a checkpoint's copy and `fsync`.
fn sqlite_writer_pragmas(
    conn: &mut sqlx::AnyConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> ConnectFuture<'_> {
    Box::pin(async move {
        sqlite_pragmas(conn, meta).await?;
        conn.execute("PRAGMA wal_autocheckpoint = 0;").await?;
        Ok(())
    })
}

/// SQLite: the connections that read the sync feed's pages — read-only, through SQLite's own C
/// API (rusqlite), on a blocking thread. Through sqlx a page of 1,000 rows took ~2.3 ms, most of a
/// pull's time: its driver copies every value of a row into a row object on the connection's
/// thread and hands rows over one by one through a channel, and the waiting task is woken for
/// nearly each one. Here the rows are decoded straight into the caller's type on the thread that
/// steps the statement, and handed over once. WAL makes these readers independent of the writer:
/// a statement reads the snapshot committed when it starts.
pub(crate) struct PageReaders {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

/// Page-reading connections kept open between reads (more are opened while more read at once).
const KEPT_PAGE_READERS: usize = 2;

impl PageReaders {
    /// Runs `read` on a kept connection (or a new one) on a blocking thread.
    pub(crate) async fn read<T, F>(self: &std::sync::Arc<Self>, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match me.idle.lock().ok().and_then(|mut idle| idle.pop()) {
                Some(c) => c,
                None => me.open()?,
            };
            let out = read(&conn);
            if let Ok(mut idle) = me.idle.lock() {
                if idle.len() < KEPT_PAGE_READERS {
                    idle.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("a page read stopped: {e}")))?
    }

    fn open(&self) -> Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(conn)
    }

    fn close(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Page(e)
    }
}

/// How often the WAL is checkpointed: also the most a power cut can take back (commits are
/// not synced one by one — `synchronous = NORMAL` — but every checkpoint syncs the WAL first).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// A WAL this long (in 4 KiB pages) after a passive checkpoint is truncated, waiting for
/// readers, so a write-heavy stretch never leaves it large.
const WAL_TRUNCATE_PAGES: i64 = 16_384;

/// Checkpoints the SQLite WAL every [`CHECKPOINT_EVERY`] on a reader connection, off every
/// request's path: a passive checkpoint copies committed pages into the database while the
/// writer keeps writing. Ends when the store is dropped or closed.
async fn checkpointer(pool: AnyPool, alive: std::sync::Weak<()>) {
    use sqlx::Row;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.strong_count() == 0 || pool.is_closed() {
            return;
        }
        let log = match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await
        {
            Ok(row) => row.try_get::<i64, _>(1).unwrap_or(0),
            Err(e) => {
                if !pool.is_closed() {
                    tracing::warn!(error = %e, "checkpointing the SQLite WAL failed");
                }
                continue;
            }
        };
        if log > WAL_TRUNCATE_PAGES {
            // Truncating waits for readers while holding writers back: wait briefly, and try
            // again at a later tick rather than stall every write.
            let truncate = async {
                let mut conn = pool.acquire().await?;
                conn.execute("PRAGMA busy_timeout = 100").await?;
                let done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                done.map(|_| ())
            };
            if let Err(e) = truncate.await {
                tracing::warn!(error = %e, "truncating the SQLite WAL failed");
            }
        }
    }
}

/// A URL without its password, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The options every pool starts from: no idle timeout and no maximum lifetime, so sqlx runs
/// no reaper task. sqlx 0.8's reaper can read an idle count that wrapped below zero and then
/// loop without yielding, holding a runtime thread at 100 % and stranding the tasks queued
/// behind it — a server that hangs (sqlx issue #3645, fixed in 0.9; seen here as a test that
/// hung for five minutes). A SQLite connection is part of the process and never goes stale; a
/// PostgreSQL one is pinged before each use, so a dropped one is replaced then.
fn pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new().idle_timeout(None).max_lifetime(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact_url("sqlite:/x/y.db"), "sqlite:/x/y.db");
    }
}
