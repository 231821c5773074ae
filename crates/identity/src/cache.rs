//! A small time-bounded cache of decrypted account views.
//!
//! Bounded in size and age: an entry lives at most `ttl` (so a change made through another node
//! shows within that time), and local changes drop it at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mica_core::{AccountId, Timestamp};

use crate::AccountView;

#[derive(Debug)]
pub(crate) struct ViewCache {
    ttl: Duration,
    max: usize,
    map: RwLock<HashMap<AccountId, (Arc<AccountView>, Timestamp)>>,
}

impl ViewCache {
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        ViewCache {
            ttl,
            max,
            map: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, id: AccountId, now: Timestamp) -> Option<Arc<AccountView>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        match map.get(&id) {
            Some((v, at)) if at.plus(self.ttl) > now && *at <= now => Some(v.clone()),
            _ => None,
        }
    }

    pub(crate) fn put(&self, id: AccountId, v: Arc<AccountView>, now: Timestamp) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max {
            let cutoff = now.minus(self.ttl);
            map.retain(|_, (_, at)| *at > cutoff);
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(id, (v, now));
    }

    pub(crate) fn remove(&self, id: AccountId) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}
