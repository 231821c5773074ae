//! Tells the devices connected to this node that a collection changed, or something their user
//! should see (a [`DeviceNotice`]).
//!
//! One broadcast channel per account with a connected device, created by the first subscriber
//! and dropped with the last. A device that falls behind loses only wake-ups, never data: it is
//! told to pull, and a pull returns everything since its token.

use std::collections::HashMap;
use std::sync::Mutex;

use mica_core::notices::DeviceNotice;
use mica_core::AccountId;
use tokio::sync::broadcast;

use crate::Category;

/// A collection changed; its newest version is `version`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub collection: String,
    pub category: Category,
    pub version: i64,
}

/// What goes out on an account's channel.
#[derive(Debug, Clone)]
pub enum Wake {
    Changed(Change),
    Notice(DeviceNotice),
}

/// Wake-ups buffered per account before a slow device starts missing them.
const BUFFER: usize = 256;

#[derive(Default)]
pub struct Hub {
    accounts: Mutex<HashMap<AccountId, broadcast::Sender<Wake>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// Starts listening to an account's changes.
    pub fn subscribe(&self, account: AccountId) -> broadcast::Receiver<Wake> {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(account)
            .or_insert_with(|| broadcast::channel(BUFFER).0)
            .subscribe()
    }

    /// Tells the account's connected devices.
    pub fn publish(&self, account: AccountId, change: Change) {
        self.send(account, Wake::Changed(change));
    }

    /// Tells the account's connected devices something to show their user.
    pub fn notify(&self, account: AccountId, notice: &DeviceNotice) {
        self.send(account, Wake::Notice(notice.clone()));
    }

    fn send(&self, account: AccountId, wake: Wake) {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(&account) {
            if tx.send(wake).is_err() {
                // Nobody listens any more.
                map.remove(&account);
            }
        }
    }

    /// Devices connected on this node, every account's.
    pub fn listeners(&self) -> usize {
        let map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|tx| tx.receiver_count()).sum()
    }

    /// Devices connected for this account on this node.
    pub fn connected(&self, account: AccountId) -> usize {
        let map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&account).map_or(0, |tx| tx.receiver_count())
    }
}
