//! Linking a device by code, for a device where typing the account's password is awkward or
//! unwanted (a laptop agent, a TV, a device handed over for setup). It follows RFC 8628's
//! device authorization grant:
//!
//! 1. the device asks with its declaration (the same as a password link) and gets a device
//!    code, which it keeps secret, and a short user code, which it shows;
//! 2. the owner, signed in on another device, looks the user code up (what model, from where),
//!    and approves it after a step-up — or declines it;
//! 3. the device polls with its device code; once approved, exactly one poll links it and
//!    returns its device credential and a session of its own.
//!
//! The activation lock applies as for a password link: only the owner account can approve a
//! locked device, and a refused approval counts as a failed unlock attempt.

use std::time::Duration;

use mica_core::crypto::{random_token_string, token_hash};
use mica_identity::{ClientInfo, DeviceInfo, Principal, SignedIn};
use mica_store::{LinkPoll, LinkRequestRow, NewLinkRequest, StoreError};
use rand::Rng;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    mask_account, rfc3339, unlock_key, Devices, DevicesError, LinkRequest, Linked, Result,
};

/// The letters of a user code: consonants only (no vowels, so no words; no 0/O or 1/I to
/// confuse), as RFC 8628 §6.1 suggests. Eight of them hold about 34 bits.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
const USER_CODE_LEN: usize = 8;

/// What a device gets when it asks to be linked by code.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LinkCode {
    /// The device polls with this; it never leaves the device.
    pub device_code: String,
    /// What the device shows, for its owner to enter on a device already signed in.
    #[schema(example = "BCDF-GHJK")]
    pub user_code: String,
    /// Seconds before both codes expire.
    pub expires_in: u64,
    /// Seconds the device waits between polls.
    pub interval: u64,
}

/// A device waiting for its owner, as the owner sees it before approving.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LinkRequestView {
    pub name: String,
    pub model: String,
    pub os_version: String,
    pub app_version: String,
    /// Find Device will be on (and the activation lock bind the device to this account).
    pub find_device: bool,
    /// The address the device asked from.
    pub ip: String,
    pub requested_at: String,
    pub expires_at: String,
}

/// A device linked by code: its credential, and the tokens of its own session.
#[derive(Debug)]
pub struct CodeLinked {
    pub linked: Linked,
    pub session: SignedIn,
}

/// A user code as a person may type it: any case, with or without the dash or spaces.
fn normalise_user_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\u{2010}'..='\u{2015}'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)))
        .then_some(code)
}

fn random_user_code() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..USER_CODE_LEN)
        .map(|_| char::from(USER_CODE_ALPHABET[rng.gen_range(0..USER_CODE_ALPHABET.len())]))
        .collect()
}

impl Devices {
    fn user_code_bidx(&self, normalised: &str) -> Vec<u8> {
        self.0.keys.blind_index("device_link_user_code", normalised)
    }

    /// A device asks to be linked by code (no account yet; limited per address).
    pub async fn request_link_code(
        &self,
        req: LinkRequest,
        client: &ClientInfo,
    ) -> Result<LinkCode> {
        let req = req.validated()?;
        self.0
            .link_requests
            .check(&client.ip)
            .map_err(|wait| DevicesError::RateLimited { retry_after: wait })?;
        let sealed = self.seal_json("device_link_request", &req)?;
        let device_code = format!("mdl_{}", random_token_string(32));
        let ttl = Duration::from_secs(self.0.cfg.link_code_ttl_secs);
        let now = self.now();
        // A clash with a live request's user code is rare (a few live codes among 2.5e10);
        // draw again.
        for _ in 0..5 {
            let user_code = random_user_code();
            let created = self
                .store()
                .create_link_request(&NewLinkRequest {
                    id: format!("dlr_{}", random_token_string(12)),
                    device_code_hash: token_hash(&device_code),
                    user_code_bidx: self.user_code_bidx(&user_code),
                    request: sealed.clone(),
                    ip: client.ip.clone(),
                    created_at: now,
                    expires_at: now.plus(ttl),
                })
                .await;
            match created {
                Ok(()) => {
                    return Ok(LinkCode {
                        device_code,
                        user_code: format!("{}-{}", &user_code[..4], &user_code[4..]),
                        expires_in: ttl.as_secs(),
                        interval: self.0.cfg.link_poll_secs,
                    })
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DevicesError::Internal(
            "no free user code after five draws".into(),
        ))
    }

    /// The pending request behind a user code the owner typed. Wrong codes are limited per
    /// account, so a session cannot walk the code space.
    async fn pending_link(&self, p: &Principal, typed: &str) -> Result<LinkRequestRow> {
        // Every attempt takes a token before the look-up, and a code that matches gives it back:
        // attempts sent at once cannot all pass before any is counted.
        let key = p.account.to_string();
        let guesses = &self.0.link_code_guesses;
        guesses
            .check(&key)
            .map_err(|wait| DevicesError::RateLimited { retry_after: wait })?;
        let found = match normalise_user_code(typed) {
            Some(code) => {
                self.store()
                    .pending_link_request(&self.user_code_bidx(&code), self.now())
                    .await?
            }
            None => None,
        };
        let row = found.ok_or(DevicesError::LinkCodeUnknown)?;
        guesses.refund(&key);
        Ok(row)
    }

    fn link_request_view(&self, row: &LinkRequestRow) -> Result<LinkRequestView> {
        let req: LinkRequest = self.open_json("device_link_request", &row.request)?;
        Ok(LinkRequestView {
            name: req.name,
            model: req.model,
            os_version: req.os_version,
            app_version: req.app_version,
            find_device: req.find_device,
            ip: row.ip.clone(),
            requested_at: rfc3339(row.created_at),
            expires_at: rfc3339(row.expires_at),
        })
    }

    /// What device waits behind this user code, for its owner to check before approving.
    pub async fn link_request(&self, p: &Principal, user_code: &str) -> Result<LinkRequestView> {
        let row = self.pending_link(p, user_code).await?;
        self.link_request_view(&row)
    }

    /// Approves a waiting device for this account (step-up required). Refused with
    /// `activation_locked` when the device is bound to another account.
    pub async fn approve_link(
        &self,
        p: &Principal,
        user_code: &str,
        client: &ClientInfo,
    ) -> Result<LinkRequestView> {
        self.0.identity.require_step_up(p).await?;
        let row = self.pending_link(p, user_code).await?;
        let req: LinkRequest = self.open_json("device_link_request", &row.request)?;
        let keys = &self.0.keys;
        let attempts_key = unlock_key(&req.hardware.index(keys));
        if let Some(owner) = self
            .store()
            .activation_lock(&req.hardware.id_indexes(keys))
            .await?
        {
            if owner != p.account {
                // Only refusals count, so strangers' attempts never lock the owner out.
                self.0
                    .unlock_attempts
                    .check(&attempts_key)
                    .map_err(|wait| DevicesError::RateLimited { retry_after: wait })?;
                tracing::info!(account = %p.account, "link approval refused: activation lock");
                return Err(DevicesError::ActivationLocked {
                    owner: mask_account(owner),
                });
            }
        }
        let decided = self
            .store()
            .decide_link_request(&row.id, p.account, &p.session, true, self.now())
            .await?;
        if !decided {
            return Err(DevicesError::LinkCodeUnknown);
        }
        self.0
            .identity
            .record_event(
                p.account,
                "device_link_approved",
                client,
                Some(&p.session),
                Some(req.model.clone()),
            )
            .await?;
        self.link_request_view(&row)
    }

    /// Declines a waiting device: its next poll learns it, and the codes stop working.
    pub async fn deny_link(&self, p: &Principal, user_code: &str) -> Result<()> {
        let row = self.pending_link(p, user_code).await?;
        if !self
            .store()
            .decide_link_request(&row.id, p.account, &p.session, false, self.now())
            .await?
        {
            return Err(DevicesError::LinkCodeUnknown);
        }
        Ok(())
    }

    /// The device polls with its device code. Until its owner decides: `LinkPending` (or
    /// `LinkSlowDown` when it polls sooner than the interval). Once approved, this poll links
    /// the device and opens its session; the codes are then used up.
    pub async fn poll_link(&self, device_code: &str, client: &ClientInfo) -> Result<CodeLinked> {
        self.0
            .link_polls
            .check(&client.ip)
            .map_err(|wait| DevicesError::RateLimited { retry_after: wait })?;
        if !device_code.starts_with("mdl_") || device_code.len() > 128 {
            return Err(DevicesError::LinkCodeExpired);
        }
        let interval_ms =
            i64::try_from(self.0.cfg.link_poll_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let row = match self
            .store()
            .poll_link_request(&token_hash(device_code), self.now(), interval_ms)
            .await?
        {
            LinkPoll::Pending => return Err(DevicesError::LinkPending),
            LinkPoll::TooSoon => {
                return Err(DevicesError::LinkSlowDown {
                    retry_after: Duration::from_secs(self.0.cfg.link_poll_secs + 5),
                })
            }
            LinkPoll::Denied => return Err(DevicesError::LinkDenied),
            LinkPoll::Gone => return Err(DevicesError::LinkCodeExpired),
            LinkPoll::Approved(row) => row,
        };
        let (Some(account), Some(approver)) = (row.account_id, row.session_id.clone()) else {
            return Err(DevicesError::Internal(
                "an approved link request without its approver".into(),
            ));
        };
        // An approval stands only while the session that gave it does: signing out everywhere
        // or changing the password after an intruder approved their own device withdraws it.
        if !self.0.identity.session_live(account, &approver).await? {
            tracing::info!(%account, "link approval withdrawn: its session ended");
            return Err(DevicesError::LinkDenied);
        }
        let req: LinkRequest = self.open_json("device_link_request", &row.request)?;
        let device_client = ClientInfo {
            ip: client.ip.clone(),
            user_agent: client.user_agent.clone(),
            device: DeviceInfo {
                model: Some(req.model.clone()),
                os_version: Some(req.os_version.clone()).filter(|v| !v.is_empty()),
                client: Some(req.app_version.clone()).filter(|v| !v.is_empty()),
            },
        };
        let session = self
            .0
            .identity
            .open_approved_session(account, &device_client)
            .await?;
        match self
            .link_as(account, &session.session, req, &device_client)
            .await
        {
            Ok(linked) => {
                tracing::info!(%account, "device linked by code");
                Ok(CodeLinked { linked, session })
            }
            Err(e) => {
                // Leave no session behind for a device that could not be linked.
                let _ = self
                    .0
                    .identity
                    .end_session(
                        account,
                        &session.session,
                        "device_link_failed",
                        &device_client,
                        None,
                    )
                    .await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_typed_loosely_and_checked_strictly() {
        assert_eq!(
            normalise_user_code("bcdf-ghjk").as_deref(),
            Some("BCDFGHJK")
        );
        assert_eq!(
            normalise_user_code(" BCDF GHJK ").as_deref(),
            Some("BCDFGHJK")
        );
        assert_eq!(normalise_user_code("BCDFGHJ"), None, "too short");
        assert_eq!(normalise_user_code("BCDF-GHJA"), None, "a vowel");
        assert_eq!(normalise_user_code("BCDF-GHJ0"), None, "a digit");
        assert_eq!(normalise_user_code("BCDF/../GH"), None);
        for _ in 0..100 {
            let c = random_user_code();
            assert_eq!(normalise_user_code(&c), Some(c));
        }
    }
}
