//! Sign-up (ID-1, ID-2): an account exists only once the code sent to its email or phone is
//! confirmed.

use std::time::Duration;

use mica_core::crypto::{random_digits, random_token_string};
use mica_core::{AccountId, Email, PhoneE164, Timestamp};
use mica_notify::Message;
use mica_store::{CodeRow, NewAccount, NewCode, StoreError};
use secrecy::{ExposeSecret, SecretString};

use crate::{ClientInfo, Identity, IdentityError, SignedIn};

pub(crate) const PURPOSE_SIGNUP: &str = "signup";

/// The identifier a person signs up with.
#[derive(Debug, Clone)]
pub enum SignupTarget {
    Email(Email),
    Phone(PhoneE164),
}

impl SignupTarget {
    pub fn parse(email: Option<&str>, phone: Option<&str>) -> Result<Self, IdentityError> {
        match (email, phone) {
            (Some(e), None) => Ok(SignupTarget::Email(Email::parse(e)?)),
            (None, Some(p)) => Ok(SignupTarget::Phone(PhoneE164::parse(p)?)),
            _ => Err(IdentityError::Invalid {
                field: "email",
                message: "give either an email address or a phone number".into(),
            }),
        }
    }
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            SignupTarget::Email(_) => "email",
            SignupTarget::Phone(_) => "phone",
        }
    }
    pub(crate) fn value(&self) -> &str {
        match self {
            SignupTarget::Email(e) => e.as_str(),
            SignupTarget::Phone(p) => p.as_str(),
        }
    }
    /// A message to this address: an email with `subject`, or an SMS of `text` alone.
    pub(crate) fn message(&self, subject: &str, text: &str) -> mica_notify::Message {
        match self {
            SignupTarget::Email(e) => mica_notify::Message::Email {
                to: e.clone(),
                subject: subject.to_owned(),
                body: text.to_owned(),
            },
            SignupTarget::Phone(p) => mica_notify::Message::Sms {
                to: p.clone(),
                text: text.to_owned(),
            },
        }
    }

    pub(crate) fn masked(&self) -> String {
        match self {
            SignupTarget::Email(e) => e.masked(),
            SignupTarget::Phone(p) => p.masked(),
        }
    }
    pub(crate) fn from_stored(kind: &str, value: &str) -> Result<Self, IdentityError> {
        let bad =
            |e: mica_core::IdentError| IdentityError::Internal(format!("stored destination: {e}"));
        match kind {
            "email" => Email::parse(value).map(SignupTarget::Email).map_err(bad),
            _ => PhoneE164::parse(value)
                .map(SignupTarget::Phone)
                .map_err(bad),
        }
    }
}

/// A sign-up waiting for its code.
#[derive(Debug, Clone)]
pub struct SignupStarted {
    pub signup_id: String,
    /// `email` or `sms`.
    pub channel: &'static str,
    /// The destination, masked.
    pub sent_to: String,
    pub expires_at: Timestamp,
    pub resend_after: Timestamp,
}

impl Identity {
    /// Starts a sign-up: checks the password, sends a code. When the identifier already has an
    /// account, the answer is the same but the message sent says so instead of carrying a code.
    pub async fn start_signup(
        &self,
        target: SignupTarget,
        password: SecretString,
        client: &ClientInfo,
    ) -> Result<SignupStarted, IdentityError> {
        crate::password::check_policy(password.expose_secret(), &[target.value()])?;
        self.limit(&self.inner.limits.signups_ip, &client.ip)?;
        let bidx = self.keys().blind_index(target.kind(), target.value());
        self.check_destination_limits(&bidx, PURPOSE_SIGNUP).await?;
        self.limit(&self.inner.limits.codes_ip, &client.ip)?;

        // Hash in every case, so a taken identifier costs the same time as a free one.
        let password_hash = self.inner.hasher.hash(&password).await?;
        let (email_b, phone_b) = match &target {
            SignupTarget::Email(_) => (Some(bidx.as_slice()), None),
            SignupTarget::Phone(_) => (None, Some(bidx.as_slice())),
        };
        let taken = self.store().identifier_taken(email_b, phone_b).await?;

        let now = self.now();
        let id = format!("su_{}", random_token_string(18));
        let code = random_digits(6);
        let expires_at = now.plus(self.code_ttl());
        self.store()
            .insert_code(&NewCode {
                id: id.clone(),
                purpose: PURPOSE_SIGNUP,
                account_id: None,
                target_kind: target.kind(),
                target_enc: Some(self.keys().seal("destination", target.value())),
                target_bidx: bidx,
                code_hash: self.keys().code_hash(&id, &code),
                payload: (!taken).then_some(password_hash),
                created_at: now,
                expires_at,
            })
            .await?;
        self.send_signup_message(&target, &code, taken);
        Ok(SignupStarted {
            signup_id: id,
            channel: channel_of(&target),
            sent_to: target.masked(),
            expires_at,
            resend_after: now.plus(self.resend_cooldown()),
        })
    }

    /// Sends a fresh code for a pending sign-up (the old one stops working).
    pub async fn resend_signup(
        &self,
        signup_id: &str,
        client: &ClientInfo,
    ) -> Result<SignupStarted, IdentityError> {
        let row = self.pending_code(signup_id, PURPOSE_SIGNUP).await?;
        let now = self.now();
        let ready = row.last_sent_at.plus(self.resend_cooldown());
        if ready > now {
            return Err(IdentityError::ResendTooSoon {
                retry_after: now.until(ready),
            });
        }
        self.check_destination_limits(&row.target_bidx, PURPOSE_SIGNUP)
            .await?;
        self.limit(&self.inner.limits.codes_ip, &client.ip)?;
        let target = self.stored_target(&row)?;
        let code = random_digits(6);
        let expires_at = now.plus(self.code_ttl());
        if !self
            .store()
            .replace_code(
                &row.id,
                &self.keys().code_hash(&row.id, &code),
                now,
                expires_at,
                true,
            )
            .await?
        {
            return Err(IdentityError::CodeExpired);
        }
        self.send_signup_message(&target, &code, row.payload.is_none());
        Ok(SignupStarted {
            signup_id: row.id,
            channel: channel_of(&target),
            sent_to: target.masked(),
            expires_at,
            resend_after: now.plus(self.resend_cooldown()),
        })
    }

    /// Confirms a sign-up with its code: the account is created and signed in.
    pub async fn verify_signup(
        &self,
        signup_id: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<SignedIn, IdentityError> {
        client.device.check()?;
        let row = self.pending_code(signup_id, PURPOSE_SIGNUP).await?;
        self.check_code(&row, code).await?;
        let Some(password_hash) = row.payload.clone() else {
            return Err(IdentityError::IdentifierTaken);
        };
        let target = self.stored_target(&row)?;
        let now = self.now();
        let (email_enc, email_bidx, phone_enc, phone_bidx) = match &target {
            SignupTarget::Email(e) => (
                Some(self.keys().seal("email", e.as_str())),
                Some(row.target_bidx.clone()),
                None,
                None,
            ),
            SignupTarget::Phone(p) => (
                None,
                None,
                Some(self.keys().seal("phone", p.as_str())),
                Some(row.target_bidx.clone()),
            ),
        };
        for _ in 0..8 {
            let account = NewAccount {
                id: AccountId::random(),
                email_enc: email_enc.clone(),
                email_bidx: email_bidx.clone(),
                phone_enc: phone_enc.clone(),
                phone_bidx: phone_bidx.clone(),
                password_hash: password_hash.clone(),
                created_at: now,
            };
            match self
                .store()
                .create_account_consuming_code(&row.id, &account)
                .await
            {
                Ok(true) => {
                    tracing::info!(account = %account.id, "account created");
                    return self.open_session(account.id, client).await;
                }
                Ok(false) => return Err(IdentityError::CodeExpired),
                Err(StoreError::Conflict) => {
                    if self
                        .store()
                        .identifier_taken(email_bidx.as_deref(), phone_bidx.as_deref())
                        .await?
                    {
                        return Err(IdentityError::IdentifierTaken);
                    }
                    // The random account number collided: draw another.
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IdentityError::Internal(
            "could not draw a free account number".into(),
        ))
    }

    fn send_signup_message(&self, target: &SignupTarget, code: &str, taken: bool) {
        let name = &self.inner.cfg.service_name;
        let mins = self.code_ttl().as_secs() / 60;
        let text = if taken {
            format!(
                "Someone (maybe you) tried to create a {name} account with this address, but it already has one. \
                 Sign in, or use \"forgot password\" to reset it. If this was not you, ignore this message."
            )
        } else {
            format!("{code} is your {name} verification code. It expires in {mins} minutes. Never share it.")
        };
        self.inner.notifier.dispatch(match target {
            SignupTarget::Email(e) => Message::Email {
                to: e.clone(),
                subject: if taken {
                    format!("You already have a {name} account")
                } else {
                    format!("{code} is your {name} verification code")
                },
                body: text,
            },
            SignupTarget::Phone(p) => Message::Sms {
                to: p.clone(),
                text,
            },
        });
    }

    pub(crate) fn stored_target(&self, row: &CodeRow) -> Result<SignupTarget, IdentityError> {
        let enc = row
            .target_enc
            .as_deref()
            .ok_or(IdentityError::CodeExpired)?;
        let value = self.keys().open("destination", enc)?;
        SignupTarget::from_stored(&row.target_kind, &value)
    }

    /// A code record that can still be used for `purpose`.
    pub(crate) async fn pending_code(
        &self,
        id: &str,
        purpose: &str,
    ) -> Result<CodeRow, IdentityError> {
        if !mica_core::crypto::is_issued_id(id) {
            return Err(IdentityError::CodeExpired);
        }
        match self.store().code(id).await? {
            Some(row) if row.purpose == purpose && row.consumed_at.is_none() => Ok(row),
            _ => Err(IdentityError::CodeExpired),
        }
    }

    /// Takes one of the record's attempts for a guess about to be compared (see
    /// [`mica_store::Store::take_code_attempt`]); the attempts now used.
    pub(crate) async fn take_attempt(&self, row: &CodeRow) -> Result<i64, IdentityError> {
        let now = self.now();
        if row.expires_at <= now {
            return Err(IdentityError::CodeExpired);
        }
        let max = self.inner.cfg.code_max_attempts;
        if let Some(attempts) = self.store().take_code_attempt(&row.id, max, now).await? {
            return Ok(attempts);
        }
        // None left — or used meanwhile by a right guess sent at the same time.
        match self.store().code(&row.id).await? {
            Some(r) if r.consumed_at.is_none() => Err(IdentityError::CodeLocked),
            _ => Err(IdentityError::CodeExpired),
        }
    }

    /// The answer to a wrong guess, with `attempts` used.
    pub(crate) fn wrong_guess(&self, attempts: i64) -> IdentityError {
        let max = self.inner.cfg.code_max_attempts;
        if attempts >= max {
            IdentityError::CodeLocked
        } else {
            IdentityError::InvalidCode {
                remaining: max - attempts,
            }
        }
    }

    /// Checks a typed code. Every guess takes an attempt first; a right one gives it back.
    pub(crate) async fn check_code(&self, row: &CodeRow, code: &str) -> Result<(), IdentityError> {
        let attempts = self.take_attempt(row).await?;
        let code = code.trim();
        let well_formed = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
        if well_formed && self.keys().code_matches(&row.id, code, &row.code_hash) {
            self.store().return_code_attempt(&row.id).await?;
            return Ok(());
        }
        Err(self.wrong_guess(attempts))
    }

    /// Cool-down and hourly cap for codes sent to one destination.
    pub(crate) async fn check_destination_limits(
        &self,
        bidx: &[u8],
        purpose: &str,
    ) -> Result<(), IdentityError> {
        let now = self.now();
        let hour = Duration::from_secs(3600);
        let (sent, last) = self
            .store()
            .codes_sent_to(bidx, purpose, now.minus(hour))
            .await?;
        if let Some(last) = last {
            let ready = last.plus(self.resend_cooldown());
            if ready > now {
                return Err(IdentityError::ResendTooSoon {
                    retry_after: now.until(ready),
                });
            }
            if sent >= self.inner.cfg.codes_per_destination_per_hour {
                return Err(IdentityError::RateLimited {
                    retry_after: now.until(last.plus(hour)),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn limit(
        &self,
        limiter: &crate::limits::Limiter,
        key: &str,
    ) -> Result<(), IdentityError> {
        limiter
            .check(key)
            .map_err(|wait| IdentityError::RateLimited { retry_after: wait })
    }

    pub(crate) fn code_ttl(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.code_ttl_secs)
    }

    pub(crate) fn resend_cooldown(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.code_resend_cooldown_secs)
    }
}

pub(crate) fn channel_of(t: &SignupTarget) -> &'static str {
    match t {
        SignupTarget::Email(_) => "email",
        SignupTarget::Phone(_) => "sms",
    }
}
