//! The device channel (commands to connected devices, re-sent until acknowledged) and the
//! owner's live feed (every state change of their devices' commands).
//!
//! A connected device has one small bounded queue in [`Registry`]; its connection's stream
//! (see [`Devices::connect`](crate::Devices::connect)) writes what arrives there, remembers
//! which commands are not acknowledged yet, and sends them again with doubling gaps. A device
//! that connects again replaces its earlier connection. Nothing here is the source of truth:
//! a command lives in the database, and a connecting device is sent every open one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mica_core::AccountId;
use tokio::sync::{broadcast, Notify};

use crate::{CommandFrame, OwnerEvent};

/// What a connection's stream is told.
#[derive(Debug)]
pub(crate) enum Wire {
    /// Deliver this command.
    Command(CommandFrame),
    /// The device acknowledged this command, or it is no longer open: stop re-sending it.
    Acked(String),
    /// Show this to the device's user (stored by its sender: a device that misses it here,
    /// its queue full or itself away, is sent it when it next connects).
    Notice(mica_core::notices::DeviceNotice),
}

/// Commands queued per connection before the connection is dropped (the device then
/// reconnects and is sent every open command from the database).
const QUEUE: usize = 8;
/// Events buffered per account for the owner's feed.
const OWNER_BUFFER: usize = 64;

/// A connection's queue: a few words while empty (an idle device costs little), woken by
/// `Notify`, whose stored permit means no wake-up is lost between a check and a wait.
#[derive(Default)]
pub(crate) struct Mailbox {
    items: Mutex<VecDeque<Wire>>,
    notify: Notify,
    closed: AtomicBool,
    /// The last few commands acknowledged through this connection: the acknowledgement
    /// recorded their delivery, so the delayed record of it is skipped (one write fewer for
    /// nearly every command).
    acked: Mutex<Vec<String>>,
}

impl Mailbox {
    fn push(&self, wire: Wire) -> bool {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() >= QUEUE || self.closed.load(Ordering::Acquire) {
            return false;
        }
        items.push_back(wire);
        drop(items);
        self.notify.notify_one();
        true
    }

    /// Tells the stream to stop re-sending a command (it was acknowledged, or is no longer
    /// open). Outside the queue's bound: there is at most one per command the stream re-sends,
    /// and a full queue must not drop the connection for news that only quiets it.
    pub(crate) fn settle(&self, id: String) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Acquire)
            || items
                .iter()
                .any(|w| matches!(w, Wire::Acked(a) if *a == id))
        {
            return;
        }
        items.push_back(Wire::Acked(id));
        drop(items);
        self.notify.notify_one();
    }

    /// Notes that a command was acknowledged (its delivery is on record).
    fn acknowledged(&self, id: &str) {
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        if acked.len() >= QUEUE {
            acked.remove(0);
        }
        acked.push(id.to_owned());
    }

    /// Whether the command was acknowledged since it was sent (forgetting it: asked once per
    /// send).
    pub(crate) fn take_acknowledged(&self, id: &str) -> bool {
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        match acked.iter().position(|a| a == id) {
            Some(i) => {
                acked.remove(i);
                true
            }
            None => false,
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// The next item; `None` once the connection was closed (replaced, or its device
    /// unlinked).
    pub(crate) async fn recv(&self) -> Option<Wire> {
        loop {
            if let Some(w) = self
                .items
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            {
                return Some(w);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            self.notify.notified().await;
        }
    }
}

struct Conn {
    mailbox: Arc<Mailbox>,
    generation: u64,
    account: AccountId,
}

#[derive(Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<String, Conn>>,
    generation: AtomicU64,
    owners: Mutex<HashMap<AccountId, broadcast::Sender<OwnerEvent>>>,
}

/// Removes a connection from the registry when its stream ends (unless a newer connection of
/// the same device replaced it).
pub(crate) struct ConnGuard {
    registry: Arc<Registry>,
    device: String,
    generation: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut conns = self
            .registry
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if conns
            .get(&self.device)
            .is_some_and(|c| c.generation == self.generation)
        {
            conns.remove(&self.device);
        }
    }
}

impl Registry {
    /// Registers a device's new connection (replacing, and so ending, an earlier one).
    pub(crate) fn connect(
        self: &Arc<Self>,
        device: &str,
        account: AccountId,
    ) -> (Arc<Mailbox>, ConnGuard) {
        let mailbox = Arc::new(Mailbox::default());
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let earlier = self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(
            device.to_owned(),
            Conn {
                mailbox: mailbox.clone(),
                generation,
                account,
            },
        );
        if let Some(c) = earlier {
            c.mailbox.close();
        }
        (
            mailbox,
            ConnGuard {
                registry: self.clone(),
                device: device.to_owned(),
                generation,
            },
        )
    }

    /// The device acknowledged a command: its connection stops re-sending it and does not
    /// record its delivery again.
    pub(crate) fn acknowledged(&self, device: &str, id: &str) {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = conns.get(device) {
            conn.mailbox.acknowledged(id);
            conn.mailbox.settle(id.to_owned());
        }
    }

    /// Hands something to the device's connection, if it has one. A connection whose queue is
    /// full is dropped: the device reconnects and gets everything from the database.
    pub(crate) fn send(&self, device: &str, wire: Wire) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = conns.get(device) else {
            return false;
        };
        if conn.mailbox.push(wire) {
            return true;
        }
        if let Some(c) = conns.remove(device) {
            c.mailbox.close();
        }
        false
    }

    /// Hands a notice to every connection of the account's devices; how many took it. A full
    /// queue skips its device (a notice is not worth dropping a connection for).
    pub(crate) fn notify_account(
        &self,
        account: AccountId,
        notice: &mica_core::notices::DeviceNotice,
    ) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .values()
            .filter(|c| c.account == account)
            .filter(|c| c.mailbox.push(Wire::Notice(notice.clone())))
            .count()
    }

    /// Ends the device's connection (it was unlinked).
    pub(crate) fn disconnect(&self, device: &str) {
        let conn = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device);
        if let Some(c) = conn {
            c.mailbox.close();
        }
    }

    pub(crate) fn is_connected(&self, device: &str) -> bool {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(device)
    }

    pub(crate) fn connections(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn subscribe(&self, account: AccountId) -> broadcast::Receiver<OwnerEvent> {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(account)
            .or_insert_with(|| broadcast::channel(OWNER_BUFFER).0)
            .subscribe()
    }

    pub(crate) fn publish(&self, account: AccountId, event: OwnerEvent) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = owners.get(&account) {
            if tx.send(event).is_err() {
                owners.remove(&account);
            }
        }
    }
}
