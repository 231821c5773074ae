//! WebDAV locks: one table per account, and a lock's timeout enforced.
//!
//! dav-server's `MemLs` keys locks by the path below the mount point, so one table shared by
//! every drive would let one account's `LOCK /` (depth infinity) refuse every other account's
//! writes. And it records a lock's timeout without ever acting on it, so a client that vanished
//! would hold its lock until the process ends. Here each account gets its own `MemLs`, every
//! lock gets a timeout (an hour unless the client asks for less, a day at most), and a lock past
//! its timeout is dropped when it gets in anyone's way or is looked at. A table that holds no
//! live lock and that no request is using is let go (at most once a minute, when a table is
//! asked for), so the node keeps tables for the accounts that lock things, not for every
//! account that ever used WebDAV.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use dav_server::memls::MemLs;
use futures_util::FutureExt;
use mica_core::AccountId;
use xmltree::Element;

/// A lock's timeout when the client names none (RFC 4918 leaves it to the server).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest timeout granted, whatever the client asks ("Infinite" included).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How often the tables that hold nothing are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The lock tables of a node, one per account that has locked something.
#[derive(Clone, Default)]
pub(crate) struct Locks {
    tables: Arc<Mutex<Tables>>,
}

#[derive(Default)]
struct Tables {
    by_account: HashMap<AccountId, AccountLocks>,
    pruned_at: Option<SystemTime>,
}

impl Locks {
    /// The account's table, made on first use.
    pub(crate) fn of(&self, account: AccountId) -> Box<AccountLocks> {
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = SystemTime::now();
        let due = tables
            .pruned_at
            .is_none_or(|at| now.duration_since(at).is_ok_and(|d| d >= PRUNE_EVERY));
        if due {
            tables.pruned_at = Some(now);
            tables.by_account.retain(|_, t| t.wanted());
        }
        // Cloned under the mutex: the clone counts as a user before a prune can look again.
        Box::new(
            tables
                .by_account
                .entry(account)
                .or_insert_with(|| AccountLocks {
                    table: MemLs::new(),
                    held: Arc::default(),
                    users: Arc::new(()),
                })
                .clone(),
        )
    }

    /// How many tables the node keeps.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_account
            .len()
    }

    /// Lets go of the tables that hold nothing, now.
    #[cfg(test)]
    fn prune(&self) {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_account
            .retain(|_, t| t.wanted());
    }
}

/// The locks a table granted and has not let go: token → (path, when it turns stale).
type Held = HashMap<String, (Vec<u8>, Option<SystemTime>)>;

/// One account's locks.
#[derive(Debug, Clone)]
pub(crate) struct AccountLocks {
    table: Box<MemLs>,
    /// The locks granted and not yet let go: token → (path, when it turns stale). `MemLs`
    /// cannot list its locks, so this is how a table is known to hold nothing.
    held: Arc<Mutex<Held>>,
    /// One per request holding the table, beside the node's own.
    users: Arc<()>,
}

fn stale(lock: &DavLock) -> bool {
    lock.timeout_at.is_some_and(|at| at <= SystemTime::now())
}

/// `MemLs` answers at once (its futures are ready when made; dav-server's `ls` module says so).
fn now<T>(f: LsFuture<'_, T>) -> Option<T> {
    f.now_or_never()
}

impl AccountLocks {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the node must keep the table: a request is using it, or it holds a live lock.
    fn wanted(&self) -> bool {
        Arc::strong_count(&self.users) > 1 || self.holds_live_locks()
    }

    /// Whether the table holds a lock that has not timed out (one a request could be refused by).
    pub(crate) fn holds_live_locks(&self) -> bool {
        self.held()
            .values()
            .any(|(_, until)| until.is_none_or(|at| at > SystemTime::now()))
    }

    fn granted(&self, lock: &DavLock) {
        self.held().insert(
            lock.token.clone(),
            (lock.path.as_bytes().to_vec(), lock.timeout_at),
        );
    }

    fn released(&self, token: &str) {
        self.held().remove(token);
    }

    /// Drops the stale locks that cover `path`; the live ones.
    fn drop_stale(&self, path: &DavPath) -> Option<Vec<DavLock>> {
        let found = now(self.table.discover(path))?;
        let (gone, live): (Vec<DavLock>, Vec<DavLock>) = found.into_iter().partition(stale);
        for lock in gone {
            let _ = now(self.table.unlock(&lock.path, &lock.token));
            self.released(&lock.token);
        }
        Some(live)
    }

    /// Runs `attempt` until it is not refused by a stale lock, dropping each one in the way.
    fn past_stale<T>(
        &self,
        mut attempt: impl FnMut() -> Option<Result<T, DavLock>>,
    ) -> Option<Result<T, DavLock>> {
        // Each round removes one lock, so this ends; the bound is only a guard.
        for _ in 0..1000 {
            match attempt()? {
                Err(lock) if stale(&lock) => {
                    let _ = now(self.table.unlock(&lock.path, &lock.token));
                    self.released(&lock.token);
                }
                other => return Some(other),
            }
        }
        None
    }
}

impl DavLockSystem for AccountLocks {
    fn lock(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&Element>,
        timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, Result<DavLock, DavLock>> {
        let timeout = Some(timeout.unwrap_or(DEFAULT_TIMEOUT).min(MAX_TIMEOUT));
        let r = self.past_stale(|| {
            now(self
                .table
                .lock(path, principal, owner, timeout, shared, deep))
        });
        let r = match r {
            Some(r) => r,
            // `MemLs` answers at once; were it ever not to, this waits for it.
            None => {
                let (path, principal, owner) =
                    (path.clone(), principal.map(str::to_owned), owner.cloned());
                return async move {
                    let r = self
                        .table
                        .lock(
                            &path,
                            principal.as_deref(),
                            owner.as_ref(),
                            timeout,
                            shared,
                            deep,
                        )
                        .await;
                    if let Ok(lock) = &r {
                        self.granted(lock);
                    }
                    r
                }
                .boxed();
            }
        };
        if let Ok(lock) = &r {
            self.granted(lock);
        }
        futures_util::future::ready(r).boxed()
    }

    fn unlock(&'_ self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        let token = token.to_owned();
        let path = path.clone();
        async move {
            let r = self.table.unlock(&path, &token).await;
            if r.is_ok() {
                self.released(&token);
            }
            r
        }
        .boxed()
    }

    fn refresh(
        &'_ self,
        path: &DavPath,
        token: &str,
        timeout: Option<Duration>,
    ) -> LsFuture<'_, Result<DavLock, ()>> {
        // A lock past its timeout is gone: it cannot be brought back.
        self.drop_stale(path);
        let timeout = Some(timeout.unwrap_or(DEFAULT_TIMEOUT).min(MAX_TIMEOUT));
        let (path, token) = (path.clone(), token.to_owned());
        async move {
            let r = self.table.refresh(&path, &token, timeout).await;
            match &r {
                Ok(lock) => self.granted(lock),
                Err(()) => self.released(&token),
            }
            r
        }
        .boxed()
    }

    fn check(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: &[String],
    ) -> LsFuture<'_, Result<(), DavLock>> {
        // Stale locks over the path go first, so a submitted token of one proves nothing.
        self.drop_stale(path);
        let r = self.past_stale(|| {
            now(self
                .table
                .check(path, principal, ignore_principal, deep, submitted_tokens))
        });
        match r {
            Some(r) => futures_util::future::ready(r).boxed(),
            None => self
                .table
                .check(path, principal, ignore_principal, deep, submitted_tokens),
        }
    }

    fn discover(&'_ self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        match self.drop_stale(path) {
            Some(live) => futures_util::future::ready(live).boxed(),
            None => self.table.discover(path),
        }
    }

    fn delete(&'_ self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        let path = path.clone();
        async move {
            let r = self.table.delete(&path).await;
            // Every lock at or below the path is gone with it.
            let base = path
                .as_bytes()
                .strip_suffix(b"/")
                .unwrap_or(path.as_bytes());
            self.held().retain(|_, (at, _)| {
                let below = at.strip_prefix(base).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with(b"/") || base.is_empty()
                });
                !below
            });
            r
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> DavPath {
        DavPath::new(p).unwrap()
    }

    async fn lock(t: &AccountLocks, p: &str) -> DavLock {
        t.lock(&path(p), None, None, None, false, true)
            .await
            .unwrap()
    }

    /// A table is kept while a request uses it or it holds a lock, and let go once neither:
    /// after an unlock, after the locked folder is deleted, after the lock's timeout.
    #[tokio::test]
    async fn a_table_that_holds_nothing_is_let_go() {
        let locks = Locks::default();
        let (a, b, c) = (
            AccountId::random(),
            AccountId::random(),
            AccountId::random(),
        );
        // Used without locking: kept while the request holds it, then let go.
        let reading = locks.of(a);
        locks.prune();
        assert_eq!(locks.len(), 1);
        drop(reading);
        locks.prune();
        assert_eq!(locks.len(), 0);

        // Locked, then unlocked.
        let t = locks.of(a);
        let l = lock(&t, "/notes.txt").await;
        drop(t);
        locks.prune();
        assert_eq!(locks.len(), 1, "a live lock keeps its table");
        let t = locks.of(a);
        t.unlock(&path("/notes.txt"), &l.token).await.unwrap();
        assert!(t.discover(&path("/notes.txt")).await.is_empty());
        drop(t);
        locks.prune();
        assert_eq!(locks.len(), 0);

        // A folder locked (depth infinity), then deleted; another account's lock
        // on a folder of the same name stays.
        let t = locks.of(b);
        lock(&t, "/docs/").await;
        let other = locks.of(c);
        let kept = lock(&other, "/docs/").await;
        drop(other);
        t.delete(&path("/docs")).await.unwrap();
        drop(t);
        locks.prune();
        assert_eq!(locks.len(), 1);
        let other = locks.of(c);
        assert_eq!(other.discover(&path("/docs/")).await.len(), 1);
        other.unlock(&path("/docs/"), &kept.token).await.unwrap();

        // A lock whose timeout has passed holds nothing.
        let expired = other
            .lock(
                &path("/old"),
                None,
                None,
                Some(Duration::ZERO),
                false,
                false,
            )
            .await
            .unwrap();
        assert!(stale(&expired));
        drop(other);
        locks.prune();
        assert_eq!(locks.len(), 0);
        // And a table asked for again starts empty: the stale lock refuses nobody.
        let t = locks.of(c);
        lock(&t, "/old").await;
    }
}
