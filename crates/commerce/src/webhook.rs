//! The payment provider's webhook: a signed JSON event saying an account paid for credits.
//!
//! `Mica-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` — the scheme
//! payment providers commonly use. Several `v1=` may be given (while the secret is being
//! changed); one must match. The time must be within the tolerance of the server's clock, so
//! a captured delivery cannot be replayed later; and an event id is credited once, so a
//! delivery repeated within the tolerance changes nothing either.

use std::time::Duration;

use hmac::{Hmac, Mac};
use mica_core::{AccountId, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use crate::{CommerceError, Result, MAX_CREDITS};

/// The event type that adds credits; others are acknowledged and ignored.
pub const CREDITS_PAID: &str = "credits.paid";

/// What the provider is answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Receipt {
    pub event: String,
    /// Whether the event added credits (now or at an earlier delivery).
    pub applied: bool,
    /// Whether it had been delivered before.
    pub duplicate: bool,
}

/// An event as the provider sends it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Event {
    /// The provider's id of the event, unique among its events.
    pub id: String,
    /// `credits.paid`; other types are acknowledged and ignored.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// The data of a `credits.paid` event.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsPaid {
    /// The account's number, as given to the provider when the payment began.
    pub account: String,
    pub credits: i64,
    /// What the owner reads in the wallet's history (e.g. "500 credits, 4.99 EUR").
    #[serde(default)]
    pub memo: Option<String>,
}

/// A checked top-up.
#[derive(Debug)]
pub struct TopUp {
    pub account: AccountId,
    pub credits: i64,
    pub memo: Option<String>,
}

fn invalid(message: impl Into<String>) -> CommerceError {
    CommerceError::Invalid {
        field: "event",
        message: message.into(),
    }
}

impl Event {
    pub fn parse(body: &[u8]) -> Result<Event> {
        let e: Event =
            serde_json::from_slice(body).map_err(|e| invalid(format!("not an event: {e}")))?;
        if e.id.is_empty() || e.id.len() > 128 || !e.id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("an event id is 1 to 128 visible ASCII characters"));
        }
        Ok(e)
    }

    /// The top-up this event is, if it is one.
    pub fn top_up(&self) -> Result<Option<TopUp>> {
        if self.kind != CREDITS_PAID {
            return Ok(None);
        }
        let d: CreditsPaid = serde_json::from_value(self.data.clone())
            .map_err(|e| invalid(format!("the data of a {CREDITS_PAID} event: {e}")))?;
        let account = d
            .account
            .parse::<AccountId>()
            .map_err(|_| invalid("data.account is not an account number"))?;
        if !(1..=MAX_CREDITS).contains(&d.credits) {
            return Err(invalid(format!(
                "data.credits must be from 1 to {MAX_CREDITS}"
            )));
        }
        let memo = match d.memo {
            Some(m) if m.chars().count() > 200 || m.chars().any(char::is_control) => {
                return Err(invalid("data.memo is one line of up to 200 characters"))
            }
            Some(m) if m.trim().is_empty() => None,
            m => m,
        };
        Ok(Some(TopUp {
            account,
            credits: d.credits,
            memo,
        }))
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The most comma-separated parts of a signature header read.
const MAX_HEADER_PARTS: usize = 8;
/// The most `v1=` signatures checked.
const MAX_SIGNATURES: usize = 4;

/// The signature header's value for `body` at `t` (what a provider computes).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(mac(secret, t, body).finalize().into_bytes())
    )
}

fn mac(secret: &str, t: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut m = HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Checks the signature header of `body` against `secret`, and its time against `now`.
pub fn verify(
    secret: &SecretString,
    header: &str,
    body: &[u8],
    now: Timestamp,
    tolerance: Duration,
) -> Result<()> {
    let mut t = None;
    let mut sigs = Vec::new();
    // A few signatures at most (two while a secret changes): more is not a provider's doing,
    // and each would cost a pass over the body.
    for part in header.split(',').take(MAX_HEADER_PARTS) {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) if v.len() == 64 && sigs.len() < MAX_SIGNATURES => {
                if let Ok(bytes) = hex::decode(v) {
                    sigs.push(bytes);
                }
            }
            _ => {}
        }
    }
    let t = t.ok_or(CommerceError::BadSignature(
        "no time (t=) in Mica-Signature",
    ))?;
    if sigs.is_empty() {
        return Err(CommerceError::BadSignature(
            "no signature (v1=) in Mica-Signature",
        ));
    }
    let tolerance = i64::try_from(tolerance.as_millis()).unwrap_or(i64::MAX);
    if t.saturating_mul(1000).abs_diff(now.millis()) > tolerance.unsigned_abs() {
        return Err(CommerceError::BadSignature(
            "the signed time is too far from the server's clock",
        ));
    }
    // One pass over the body; each candidate compared in constant time.
    let expected = mac(secret.expose_secret(), t, body).finalize();
    let ok = sigs.iter().any(|s| {
        hmac::digest::CtOutput::<HmacSha256>::new(
            hmac::digest::generic_array::GenericArray::clone_from_slice(s),
        ) == expected
    });
    if !ok {
        return Err(CommerceError::BadSignature(
            "the signature does not match the body",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_body_and_time_only() {
        let secret = SecretString::from("whsec_test");
        let body = br#"{"id":"evt_1","type":"credits.paid"}"#;
        let now = Timestamp(1_800_000_000_000);
        let tol = Duration::from_secs(300);
        let h = sign("whsec_test", 1_800_000_000, body);
        verify(&secret, &h, body, now, tol).unwrap();
        // Another body, another secret, an old time, garbage: refused.
        assert!(verify(&secret, &h, b"{}", now, tol).is_err());
        assert!(verify(&SecretString::from("other"), &h, body, now, tol).is_err());
        let old = sign("whsec_test", 1_800_000_000 - 301, body);
        assert!(verify(&secret, &old, body, now, tol).is_err());
        assert!(verify(&secret, "t=x,v1=zz", body, now, tol).is_err());
        assert!(verify(&secret, "", body, now, tol).is_err());
        // A matching signature among several is enough (a secret being changed).
        let two = format!("t=1800000000,v1={},{}", "ab".repeat(32), &h[13..]);
        verify(&secret, &two, body, now, tol).unwrap();
        // A flood of candidates is not read past the first few.
        let flood = format!("t=1800000000,{}{}", "v1=,".repeat(10_000), &h[13..]);
        assert!(verify(&secret, &flood, body, now, tol).is_err());
    }

    #[test]
    fn an_event_is_checked() {
        let e = Event::parse(
            br#"{"id":"evt_1","type":"credits.paid","data":{"account":"1234567890","credits":50}}"#,
        )
        .unwrap();
        let t = e.top_up().unwrap().unwrap();
        assert_eq!(t.credits, 50);
        let e = Event::parse(br#"{"id":"evt_2","type":"charge.refunded","data":{}}"#).unwrap();
        assert!(e.top_up().unwrap().is_none());
        for bad in [
            &br#"{"id":"","type":"credits.paid"}"#[..],
            br#"{"id":"evt_3","type":"credits.paid","data":{"account":"x","credits":5}}"#,
            br#"{"id":"evt_3","type":"credits.paid","data":{"account":"1234567890","credits":0}}"#,
            br#"{"id":"evt_3","type":"credits.paid","data":{"account":"1234567890","credits":5,"x":1}}"#,
            b"not json",
        ] {
            let r = Event::parse(bad).and_then(|e| e.top_up());
            assert!(r.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
