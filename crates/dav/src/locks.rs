//! WebDAV locks: one table per account, and a lock's timeout enforced.
//!
//! dav-server's `MemLs` keys locks by the path below the mount point, so one table shared by
//! every drive would let one account's `LOCK /` (depth infinity) refuse every other account's
//! writes. And it records a lock's timeout without ever acting on it, so a client that vanished
//! would hold its lock until the process ends. Here each account gets its own `MemLs`, every
//! lock gets a timeout (an hour unless the client asks for less, a day at most), and a lock past
//! its timeout is dropped when it gets in anyone's way or is looked at.

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

/// The lock tables of a node, one per account that has locked something.
#[derive(Clone, Default)]
pub(crate) struct Locks {
    tables: Arc<Mutex<HashMap<AccountId, AccountLocks>>>,
}

impl Locks {
    /// The account's table, made on first use.
    pub(crate) fn of(&self, account: AccountId) -> Box<AccountLocks> {
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Box::new(
            tables
                .entry(account)
                .or_insert_with(|| AccountLocks {
                    table: MemLs::new(),
                })
                .clone(),
        )
    }
}

/// One account's locks.
#[derive(Debug, Clone)]
pub(crate) struct AccountLocks {
    table: Box<MemLs>,
}

fn stale(lock: &DavLock) -> bool {
    lock.timeout_at.is_some_and(|at| at <= SystemTime::now())
}

/// `MemLs` answers at once (its futures are ready when made; dav-server's `ls` module says so).
fn now<T>(f: LsFuture<'_, T>) -> Option<T> {
    f.now_or_never()
}

impl AccountLocks {
    /// Drops the stale locks that cover `path`; the live ones.
    fn drop_stale(&self, path: &DavPath) -> Option<Vec<DavLock>> {
        let found = now(self.table.discover(path))?;
        let (gone, live): (Vec<DavLock>, Vec<DavLock>) = found.into_iter().partition(stale);
        for lock in gone {
            let _ = now(self.table.unlock(&lock.path, &lock.token));
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
        match r {
            Some(r) => futures_util::future::ready(r).boxed(),
            None => self
                .table
                .lock(path, principal, owner, timeout, shared, deep),
        }
    }

    fn unlock(&'_ self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        self.table.unlock(path, token)
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
        self.table.refresh(path, token, timeout)
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
        self.table.delete(path)
    }
}
