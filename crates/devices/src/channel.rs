//! The device channel (commands to connected devices, re-sent until acknowledged) and the
//! owner's live feed (every state change of their devices' commands).
//!
//! A connected device has one small bounded queue in [`Registry`]; its connection's stream
//! (see [`Devices::connect`](crate::Devices::connect)) writes what arrives there, remembers
//! which commands are not acknowledged yet, and sends them again with doubling gaps. A device
//! that connects again replaces its earlier connection. Nothing here is the source of truth:
//! a command lives in the database, and a connecting device is sent every open one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mica_core::AccountId;
use tokio::sync::{broadcast, mpsc};

use crate::OwnerEvent;

/// What a connection's stream is told.
#[derive(Debug)]
pub(crate) enum Wire {
    /// Deliver this command (by id: the stream reads it from the database).
    Command(String),
    /// The device acknowledged this command: stop re-sending it.
    Acked(String),
}

/// Commands queued per connection before the connection is dropped (the device then
/// reconnects and is sent every open command from the database).
const QUEUE: usize = 8;
/// Events buffered per account for the owner's feed.
const OWNER_BUFFER: usize = 64;

struct Conn {
    tx: mpsc::Sender<Wire>,
    generation: u64,
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
    pub(crate) fn connect(self: &Arc<Self>, device: &str) -> (mpsc::Receiver<Wire>, ConnGuard) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device.to_owned(), Conn { tx, generation });
        (
            rx,
            ConnGuard {
                registry: self.clone(),
                device: device.to_owned(),
                generation,
            },
        )
    }

    /// Hands something to the device's connection, if it has one. A connection whose queue is
    /// full is dropped: the device reconnects and gets everything from the database.
    pub(crate) fn send(&self, device: &str, wire: Wire) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = conns.get(device) else {
            return false;
        };
        match conn.tx.try_send(wire) {
            Ok(()) => true,
            Err(_) => {
                conns.remove(device);
                false
            }
        }
    }

    /// Ends the device's connection (it was unlinked).
    pub(crate) fn disconnect(&self, device: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device);
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
