//! Rate limits: generic cell-rate limiters keyed by a string, on the injected clock.
//!
//! These run in the memory of one node; the per-account sign-in back-off, which must survive a
//! restart and hold across nodes, lives in the database (`accounts.failed_logins`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mica_core::{Clock, Timestamp};

/// `burst` events at once, refilled at one every `period / burst`.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub burst: u32,
    #[serde(with = "secs")]
    pub period: Duration,
}

mod secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let n: u64 = serde::Deserialize::deserialize(d)?;
        Ok(Duration::from_secs(n))
    }
}

impl Rate {
    pub const fn new(burst: u32, period: Duration) -> Self {
        Rate { burst, period }
    }
}

/// A GCRA limiter: each key keeps one timestamp (its theoretical arrival time).
#[derive(Debug, Clone)]
pub struct Limiter {
    rate: Rate,
    tat: Arc<Mutex<HashMap<String, i64>>>,
    clock: Arc<dyn Clock>,
    /// When the map was last swept of spent entries (it is swept past 100,000 of them, at
    /// most once a second: a map full of live entries must not be rescanned on every call).
    swept: Arc<std::sync::atomic::AtomicI64>,
}

/// The key a client address is limited under: an IPv6 address by its /64, the block one
/// subscriber holds (each of its 2^64 addresses would otherwise have a budget of its own);
/// anything else as it is.
fn limit_key(key: &str) -> std::borrow::Cow<'_, str> {
    match key.parse::<std::net::Ipv6Addr>() {
        Ok(ip) if ip.to_ipv4_mapped().is_none() => {
            let s = ip.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]).into()
        }
        _ => key.into(),
    }
}

impl Limiter {
    pub fn new(rate: Rate, clock: Arc<dyn Clock>) -> Self {
        Limiter {
            rate,
            tat: Arc::new(Mutex::new(HashMap::new())),
            clock,
            swept: Arc::default(),
        }
    }

    fn interval_ms(&self) -> i64 {
        let ms = i64::try_from(self.rate.period.as_millis()).unwrap_or(i64::MAX);
        (ms / i64::from(self.rate.burst.max(1))).max(1)
    }

    /// Takes one token for `key`; `Err(wait)` when none is left.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let key = limit_key(key);
        let now = self.clock.now().millis();
        let t = self.interval_ms();
        let tolerance = t.saturating_mul(i64::from(self.rate.burst.max(1)) - 1);
        let mut map = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let swept = self.swept.load(std::sync::atomic::Ordering::Relaxed);
        if map.len() > 100_000 && now - swept >= 1000 {
            map.retain(|_, tat| *tat > now);
            self.swept.store(now, std::sync::atomic::Ordering::Relaxed);
        }
        let tat = map.get(key.as_ref()).copied().unwrap_or(now).max(now);
        let allow_at = tat - tolerance;
        if allow_at > now {
            return Err(Duration::from_millis(
                u64::try_from(allow_at - now).unwrap_or(0),
            ));
        }
        map.insert(key.into_owned(), tat + t);
        Ok(())
    }

    /// Gives back a token [`Self::check`] took, for an attempt that turned out not to count
    /// (taking first and giving back after keeps attempts made at once within the limit).
    pub fn refund(&self, key: &str) {
        let key = limit_key(key);
        let now = self.clock.now().millis();
        let t = self.interval_ms();
        let mut map = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = map.get_mut(key.as_ref()) {
            *tat -= t;
            if *tat <= now {
                map.remove(key.as_ref());
            }
        }
    }

    /// Whether `key` would be allowed now, without taking a token.
    pub fn peek(&self, key: &str) -> Result<(), Duration> {
        let key = limit_key(key);
        let now = self.clock.now().millis();
        let t = self.interval_ms();
        let tolerance = t.saturating_mul(i64::from(self.rate.burst.max(1)) - 1);
        let map = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let tat = map.get(key.as_ref()).copied().unwrap_or(now).max(now);
        let allow_at = tat - tolerance;
        if allow_at > now {
            return Err(Duration::from_millis(
                u64::try_from(allow_at - now).unwrap_or(0),
            ));
        }
        Ok(())
    }
}

/// Failure counters with exponential back-off for keys that have no database row (sign-in
/// attempts on identifiers that match no account), so they behave exactly like real accounts.
#[derive(Debug, Clone)]
pub struct FailureBackoff {
    state: Arc<Mutex<HashMap<String, (i64, Timestamp)>>>,
}

impl Default for FailureBackoff {
    fn default() -> Self {
        FailureBackoff {
            state: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl FailureBackoff {
    pub fn locked_until(&self, key: &str) -> Timestamp {
        let map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).map(|(_, t)| *t).unwrap_or(Timestamp(0))
    }
    pub fn record_failure(&self, key: &str) -> i64 {
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        let e = map.entry(key.to_owned()).or_insert((0, Timestamp(0)));
        e.0 += 1;
        e.0
    }
    pub fn lock(&self, key: &str, until: Timestamp) {
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(key) {
            e.1 = e.1.max(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mica_core::ManualClock;

    #[test]
    fn burst_then_refill() {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let l = Limiter::new(
            Rate::new(3, Duration::from_secs(30)),
            Arc::new(clock.clone()),
        );
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        let wait = l.check("a").unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        assert!(l.check("b").is_ok(), "keys are independent");
        clock.advance(Duration::from_secs(10));
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_err());
    }

    #[test]
    fn an_ipv6_subscriber_has_one_budget_for_its_64() {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let l = Limiter::new(Rate::new(2, Duration::from_secs(60)), Arc::new(clock));
        assert!(l.check("2001:db8:1:2::1").is_ok());
        assert!(l.check("2001:db8:1:2:ffff::9").is_ok());
        assert!(
            l.check("2001:db8:1:2:abcd::7").is_err(),
            "another address of the same /64"
        );
        assert!(l.check("2001:db8:1:3::1").is_ok(), "another /64");
        assert!(l.check("192.0.2.1").is_ok());
        assert!(
            l.check("192.0.2.2").is_ok(),
            "IPv4 addresses each have their own"
        );
    }
}
