//! Step-up verification, password change, TOTP two-step sign-in, recovery codes and the security
//! audit log (PRODUCT.md ID-6, ID-7, part of ID-11).
//!
//! Step-up: every change to the account requires a fresh proof — a code sent to the account's
//! email or phone, or a TOTP code — even from a signed-in session that knows the password. The
//! proof marks the session (`sessions.stepped_up_until`) for a few minutes; sensitive operations
//! call [`Identity::require_step_up`] and answer `403 step_up_required` without it.

use std::time::Duration;

use mica_core::crypto::{random_digits, random_token_string};
use mica_core::{AccountId, SessionId, Timestamp};
use mica_notify::Message;
use mica_store::{NewCode, SecurityEventRow};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use totp_rs::{Algorithm, TOTP};

use crate::signup::SignupTarget;
use crate::{ClientInfo, Identity, IdentityError, Principal, SignedIn};

const PURPOSE_STEP_UP: &str = "step_up";
const PURPOSE_TWO_STEP: &str = "two_step";
/// How long a step-up proof lasts.
const STEP_UP_TTL: Duration = Duration::from_secs(10 * 60);
const TOTP_PERIOD: u64 = 30;
const RECOVERY_CODES: usize = 10;
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// Where a step-up or second-factor code is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeChannel {
    Email,
    Sms,
}

/// A code on its way.
#[derive(Debug, Clone)]
pub struct CodeSent {
    pub challenge_id: String,
    pub channel: &'static str,
    pub sent_to: String,
    pub expires_at: Timestamp,
}

/// A proof offered for step-up.
#[derive(Debug, Clone)]
pub enum StepUpProof {
    /// The code sent for `challenge_id`.
    Code { challenge_id: String, code: String },
    /// A code from the authenticator app.
    Totp(String),
    /// An answer to [`Identity::begin_passkey_step_up`]'s challenge.
    Passkey {
        challenge_id: String,
        credential: Box<webauthn_rs::prelude::PublicKeyCredential>,
    },
}

/// A second factor offered to finish a sign-in.
#[derive(Debug, Clone)]
pub enum SecondFactor {
    Totp(String),
    RecoveryCode(String),
    /// A code sent by [`Identity::send_two_step_code`].
    Code(String),
}

/// What signing in led to.
#[derive(Debug, Clone)]
pub enum SignInOutcome {
    SignedIn(SignedIn),
    /// The password was right; a second factor is needed.
    TwoStep {
        challenge_id: String,
        expires_at: Timestamp,
        methods: Vec<&'static str>,
    },
}

/// A new authenticator, to be confirmed with its first code.
#[derive(Debug, Clone)]
pub struct TotpEnrollment {
    pub secret_base32: String,
    pub otpauth_uri: String,
    pub qr_svg: String,
}

#[derive(Debug, Clone)]
pub struct TwoStepStatus {
    pub totp: bool,
    pub recovery_codes_left: i64,
}

pub type SecurityEvent = SecurityEventRow;

fn normalise_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl Identity {
    pub(crate) async fn event(
        &self,
        account: AccountId,
        kind: &str,
        client: &ClientInfo,
        session: Option<&SessionId>,
        detail: Option<String>,
    ) -> Result<(), IdentityError> {
        let notice = notice(kind, detail.as_deref());
        let by_mail_only = MAIL_ONLY.contains(&kind);
        self.store()
            .record_security_event(
                account,
                &SecurityEventRow {
                    at: self.now(),
                    kind: kind.into(),
                    ip: client.ip.clone(),
                    user_agent: client.user_agent.chars().take(512).collect(),
                    session_id: session.cloned(),
                    detail,
                },
            )
            .await?;
        if let Some((subject, what)) = notice {
            self.notify_owner(account, subject, &what, client, by_mail_only)
                .await;
        }
        Ok(())
    }

    /// Tells the owner of `account` — by mail, by SMS when it has no email — of a change to
    /// what protects it, so that one they did not make (a stolen, unlocked phone; a session
    /// taken over) does not go unnoticed. Best effort: the change is made and logged whatever
    /// becomes of the message.
    async fn notify_owner(
        &self,
        account: AccountId,
        subject: &str,
        what: &str,
        client: &ClientInfo,
        by_mail_only: bool,
    ) {
        let name = &self.inner.cfg.service_name;
        let text = format!(
            "{what} on your {name} account {account}, from the address {}. If this was not you, \
             change your password now, then review your devices and your security settings.",
            client.ip
        );
        if by_mail_only {
            self.mail_owner(account, subject, text).await;
        } else {
            self.tell_owner(account, subject, text).await;
        }
    }

    /// Sends the owner of `account` a message about a lost device — by mail only: to the
    /// account's email, else its recovery email, else not at all. An SMS would go to the
    /// account's phone number, quite possibly in the lost phone, telling whoever holds it that
    /// it was located or is about to be erased.
    pub async fn mail_owner(&self, account: AccountId, subject: &str, text: String) {
        let name = &self.inner.cfg.service_name;
        let to = match self.mail_address(account).await {
            Ok(Some(to)) => to,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot find where to send a notice");
                return;
            }
        };
        self.inner.notifier.dispatch(Message::Email {
            to,
            subject: format!("{name}: {subject}"),
            body: text,
        });
    }

    /// Tells the owner at every address the account knows — its email and phone, and its
    /// recovery email and phone — so that a change made through one of them (a recovery
    /// address an attacker added, a SIM swapped) is seen at the others. Best effort.
    pub(crate) async fn tell_everywhere(&self, account: AccountId, subject: &str, text: &str) {
        for target in self.known_addresses(account).await {
            self.inner.notifier.dispatch(target.message(subject, text));
        }
    }

    /// Every address the account knows: its email and phone, its recovery email and phone
    /// (each once). What cannot be read is logged and left out.
    pub(crate) async fn known_addresses(&self, account: AccountId) -> Vec<SignupTarget> {
        let mut to: Vec<SignupTarget> = Vec::new();
        match self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await
            .map_err(IdentityError::from)
            .and_then(|row| row.map(|r| self.view(&r)).transpose())
        {
            Ok(Some(view)) => {
                to.extend(view.email.map(SignupTarget::Email));
                to.extend(view.phone.map(SignupTarget::Phone));
            }
            Ok(None) => return to,
            Err(e) => tracing::warn!(error = %e, "cannot read the account to send a notice"),
        }
        match self.store().recovery_factors(account).await {
            Ok(factors) => {
                for f in factors {
                    let field = if f.kind == "email" {
                        "recovery_email"
                    } else {
                        "recovery_phone"
                    };
                    match self
                        .keys()
                        .open(field, &f.value_enc)
                        .map_err(IdentityError::from)
                        .and_then(|v| SignupTarget::from_stored(&f.kind, &v))
                    {
                        Ok(t) if !to.iter().any(|o| o.value() == t.value()) => to.push(t),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot open a recovery address"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the recovery addresses"),
        }
        to
    }

    /// The account's email, else its recovery email.
    async fn mail_address(
        &self,
        account: AccountId,
    ) -> Result<Option<mica_core::Email>, IdentityError> {
        if let Some(row) = self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await?
        {
            if let Some(e) = self.view(&row)?.email {
                return Ok(Some(e));
            }
        }
        for f in self.store().recovery_factors(account).await? {
            if f.kind == "email" {
                let value = self.keys().open("recovery_email", &f.value_enc)?;
                if let crate::signup::SignupTarget::Email(e) =
                    crate::signup::SignupTarget::from_stored(&f.kind, &value)?
                {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }

    /// Sends the owner of `account` a message: by mail (subject prefixed with the service's
    /// name), by SMS when the account has no email. Best effort: a failure is logged.
    pub async fn tell_owner(&self, account: AccountId, subject: &str, text: String) {
        let view = match self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await
        {
            Ok(Some(row)) => match self.view(&row) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the account to send a notice");
                    return;
                }
            },
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the account to send a notice");
                return;
            }
        };
        let name = &self.inner.cfg.service_name;
        if let Some(e) = view.email {
            self.inner.notifier.dispatch(Message::Email {
                to: e,
                subject: format!("{name}: {subject}"),
                body: text,
            });
        } else if let Some(ph) = view.phone {
            self.inner.notifier.dispatch(Message::Sms { to: ph, text });
        }
    }

    /// The account's security events, newest first.
    pub async fn security_events(
        &self,
        p: &Principal,
        limit: i64,
    ) -> Result<Vec<SecurityEvent>, IdentityError> {
        Ok(self
            .store()
            .security_events(p.account, limit.clamp(1, 500))
            .await?)
    }

    /// Fails with `StepUpRequired` unless this session proved a fresh factor recently.
    pub async fn require_step_up(&self, p: &Principal) -> Result<(), IdentityError> {
        match self.store().session_step_up(p.account, &p.session).await? {
            Some(until) if until > self.now() => Ok(()),
            Some(_) => Err(IdentityError::StepUpRequired),
            None => Err(IdentityError::Unauthenticated),
        }
    }

    async fn destination(
        &self,
        account: AccountId,
        channel: CodeChannel,
    ) -> Result<SignupTarget, IdentityError> {
        let row = self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await?
            .ok_or(IdentityError::Unauthenticated)?;
        let view = self.view(&row)?;
        match channel {
            CodeChannel::Email => {
                view.email
                    .map(SignupTarget::Email)
                    .ok_or(IdentityError::FactorMissing(
                        "this account has no email address; use its phone",
                    ))
            }
            CodeChannel::Sms => {
                view.phone
                    .map(SignupTarget::Phone)
                    .ok_or(IdentityError::FactorMissing(
                        "this account has no phone number; use its email",
                    ))
            }
        }
    }

    /// Records a fresh code for `purpose` to `target` (a new record, or — for `existing` — a new
    /// code on a pending one), after the per-destination and per-IP limits. Returns the record id,
    /// the code and its expiry; the caller words and sends the message with [`Self::deliver_code`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn issue_code(
        &self,
        account: AccountId,
        target: &SignupTarget,
        purpose: &'static str,
        existing: Option<&str>,
        bound_to: Option<&SessionId>,
        client: &ClientInfo,
    ) -> Result<(String, String, Timestamp), IdentityError> {
        let bidx = self.keys().blind_index(target.kind(), target.value());
        if existing.is_none() {
            // A resend on an existing challenge is limited by its caller.
            self.check_destination_limits(&bidx, purpose).await?;
        }
        self.limit(&self.inner.limits.codes_ip, &client.ip)?;
        let now = self.now();
        let code = random_digits(6);
        let expires_at = now.plus(self.code_ttl());
        let id = match existing {
            Some(id) => {
                if !self
                    .store()
                    .replace_code(
                        id,
                        &self.keys().code_hash(id, &code),
                        now,
                        expires_at,
                        false,
                    )
                    .await?
                {
                    return Err(IdentityError::CodeExpired);
                }
                id.to_owned()
            }
            None => {
                let id = format!("vc_{}", random_token_string(18));
                self.store()
                    .insert_code(&NewCode {
                        id: id.clone(),
                        purpose,
                        account_id: Some(account),
                        target_kind: target.kind(),
                        target_enc: Some(self.keys().seal("destination", target.value())),
                        target_bidx: bidx,
                        code_hash: self.keys().code_hash(&id, &code),
                        payload: bound_to.map(|s| s.0.clone()),
                        created_at: now,
                        expires_at,
                    })
                    .await?;
                id
            }
        };
        Ok((id, code, expires_at))
    }

    /// Sends a code's message (email with `subject`, or SMS) and says where it went, masked.
    pub(crate) fn deliver_code(
        &self,
        target: SignupTarget,
        challenge_id: String,
        expires_at: Timestamp,
        subject: String,
        text: String,
    ) -> CodeSent {
        let (channel, sent_to) = match &target {
            SignupTarget::Email(e) => ("email", e.masked()),
            SignupTarget::Phone(p) => ("sms", p.masked()),
        };
        self.inner.notifier.dispatch(match target {
            SignupTarget::Email(e) => Message::Email {
                to: e,
                subject,
                body: text,
            },
            SignupTarget::Phone(p) => Message::Sms { to: p, text },
        });
        CodeSent {
            challenge_id,
            channel,
            sent_to,
            expires_at,
        }
    }

    /// Sends a code to the account's own email or phone and records it for `purpose`.
    #[allow(clippy::too_many_arguments)]
    async fn send_account_code(
        &self,
        account: AccountId,
        channel: CodeChannel,
        purpose: &'static str,
        existing: Option<&str>,
        bound_to: Option<&SessionId>,
        client: &ClientInfo,
        what: &str,
    ) -> Result<CodeSent, IdentityError> {
        let target = self.destination(account, channel).await?;
        let (id, code, expires_at) = self
            .issue_code(account, &target, purpose, existing, bound_to, client)
            .await?;
        let name = &self.inner.cfg.service_name;
        let mins = self.code_ttl().as_secs() / 60;
        let text = format!(
            "{code} is your {name} code to {what}. It expires in {mins} minutes. \
             If you did not ask for it, someone may know your password: change it."
        );
        let subject = format!("{code} is your {name} security code");
        Ok(self.deliver_code(target, id, expires_at, subject, text))
    }

    /// Sends a code for `purpose` to the account's email or phone, redeemable only by the session
    /// that asked for it.
    pub(crate) async fn send_session_code(
        &self,
        p: &Principal,
        channel: CodeChannel,
        purpose: &'static str,
        client: &ClientInfo,
        what: &str,
    ) -> Result<CodeSent, IdentityError> {
        self.send_account_code(
            p.account,
            channel,
            purpose,
            None,
            Some(&p.session),
            client,
            what,
        )
        .await
    }

    /// Checks and consumes a code sent by [`Identity::send_session_code`] to this very session.
    pub(crate) async fn redeem_session_code(
        &self,
        p: &Principal,
        challenge_id: &str,
        code: &str,
        purpose: &str,
    ) -> Result<mica_store::CodeRow, IdentityError> {
        let row = self.pending_code(challenge_id, purpose).await?;
        if row.account_id != Some(p.account) || row.payload.as_deref() != Some(p.session.0.as_str())
        {
            return Err(IdentityError::CodeExpired);
        }
        self.check_code(&row, code).await?;
        if !self.store().consume_code(&row.id, self.now()).await? {
            return Err(IdentityError::CodeExpired);
        }
        Ok(row)
    }

    /// Sends a step-up code to the account's email or phone.
    pub async fn start_step_up(
        &self,
        p: &Principal,
        channel: CodeChannel,
        client: &ClientInfo,
    ) -> Result<CodeSent, IdentityError> {
        self.send_account_code(
            p.account,
            channel,
            PURPOSE_STEP_UP,
            None,
            Some(&p.session),
            client,
            "confirm a change to your account",
        )
        .await
    }

    /// Verifies a step-up proof; the session may then change the account until the returned time.
    pub async fn verify_step_up(
        &self,
        p: &Principal,
        proof: StepUpProof,
        client: &ClientInfo,
    ) -> Result<Timestamp, IdentityError> {
        let method = match proof {
            StepUpProof::Code { challenge_id, code } => {
                self.redeem_session_code(p, &challenge_id, &code, PURPOSE_STEP_UP)
                    .await?;
                "code"
            }
            StepUpProof::Totp(code) => {
                self.limit(&self.inner.limits.signin_ip, &client.ip)?;
                self.check_backoff(p.account).await?;
                if let Err(e) = self.check_totp(p.account, &code).await {
                    if !matches!(e, IdentityError::TwoStepNotEnabled) {
                        self.second_factor_failed(p.account, client).await?;
                    }
                    return Err(e);
                }
                self.store().clear_login_failures(p.account).await?;
                "totp"
            }
            StepUpProof::Passkey {
                challenge_id,
                credential,
            } => {
                self.check_passkey_step_up(p, &challenge_id, &credential)
                    .await?;
                "passkey"
            }
        };
        let until = self.now().plus(STEP_UP_TTL);
        if !self
            .store()
            .set_step_up(p.account, &p.session, until)
            .await?
        {
            return Err(IdentityError::Unauthenticated);
        }
        self.event(
            p.account,
            "step_up",
            client,
            Some(&p.session),
            Some(method.into()),
        )
        .await?;
        Ok(until)
    }

    /// Changes the password (step-up required); every other session is signed out.
    pub async fn change_password(
        &self,
        p: &Principal,
        new_password: SecretString,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.require_step_up(p).await?;
        let row = self
            .store()
            .account(mica_store::LookupBy::Id(p.account))
            .await?
            .ok_or(IdentityError::Unauthenticated)?;
        let view = self.view(&row)?;
        let id_text = view.id.to_string();
        let mut context: Vec<&str> = vec![&id_text];
        context.extend(view.email.as_ref().map(|e| e.as_str()));
        context.extend(view.phone.as_ref().map(|p| p.as_str()));
        crate::password::check_policy(new_password.expose_secret(), &context)?;
        let hash = self.inner.hasher.hash(&new_password).await?;
        let revoked = self
            .store()
            .change_password(p.account, &hash, self.now(), &p.session)
            .await?;
        let n = revoked.len();
        self.note_revoked(revoked);
        self.account_changed(p.account);
        self.event(
            p.account,
            "password_changed",
            client,
            Some(&p.session),
            Some(format!("{n} other session(s) signed out")),
        )
        .await?;
        let name = &self.inner.cfg.service_name;
        let text = format!(
            "The password of your {name} account {} was changed and your other devices were signed out. \
             If this was not you, reset your password now.",
            p.account
        );
        self.tell_everywhere(
            p.account,
            &format!("Your {name} password was changed"),
            &text,
        )
        .await;
        Ok(())
    }

    fn totp(&self, account: AccountId, secret: Vec<u8>) -> Result<TOTP, IdentityError> {
        TOTP::new(
            Algorithm::SHA1,
            6,
            1,
            TOTP_PERIOD,
            secret,
            Some(self.inner.cfg.service_name.clone()),
            account.to_string(),
        )
        .map_err(|e| IdentityError::Internal(format!("totp: {e}")))
    }

    /// Finds the time step a TOTP code belongs to (±1 step of drift).
    fn totp_step(&self, totp: &TOTP, code: &str) -> Option<i64> {
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = u64::try_from(self.now().millis() / 1000).unwrap_or(0);
        let step = now / TOTP_PERIOD;
        for s in [step.saturating_sub(1), step, step + 1] {
            let expected = totp.generate(s * TOTP_PERIOD);
            let equal = expected.len() == code.len()
                && expected
                    .bytes()
                    .zip(code.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if equal {
                return i64::try_from(s).ok();
            }
        }
        None
    }

    /// Checks a TOTP code of the account's confirmed factor; each code works once.
    async fn check_totp(&self, account: AccountId, code: &str) -> Result<(), IdentityError> {
        let factor = self.store().totp_factor(account).await?;
        let Some(f) = factor.filter(|f| f.confirmed_at.is_some()) else {
            return Err(IdentityError::TwoStepNotEnabled);
        };
        let secret = self.keys().open("totp", &f.secret_enc)?;
        let totp = self.totp(account, base64_decode(&secret)?)?;
        let wrong = || IdentityError::Invalid {
            field: "code",
            message: "this authenticator code is wrong, expired or already used".into(),
        };
        let step = self.totp_step(&totp, code).ok_or_else(wrong)?;
        if self.store().use_totp_step(account, step).await? {
            Ok(())
        } else {
            Err(wrong())
        }
    }

    pub async fn two_step_status(&self, p: &Principal) -> Result<TwoStepStatus, IdentityError> {
        let totp = self
            .store()
            .totp_factor(p.account)
            .await?
            .is_some_and(|f| f.confirmed_at.is_some());
        let left = self.store().recovery_codes_left(p.account).await?;
        Ok(TwoStepStatus {
            totp,
            recovery_codes_left: left,
        })
    }

    /// Starts setting up an authenticator app (step-up required).
    pub async fn begin_totp(&self, p: &Principal) -> Result<TotpEnrollment, IdentityError> {
        self.require_step_up(p).await?;
        let mut secret = vec![0u8; 20];
        rand::rngs::OsRng.fill(&mut secret[..]);
        let totp = self.totp(p.account, secret.clone())?;
        let sealed = self.keys().seal("totp", &base64_encode(&secret));
        if !self
            .store()
            .put_pending_totp(p.account, &sealed, self.now())
            .await?
        {
            return Err(IdentityError::TwoStepEnabled);
        }
        let uri = totp.get_url();
        let qr_svg = qrcode::QrCode::new(uri.as_bytes())
            .map_err(|e| IdentityError::Internal(format!("qr: {e}")))?
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build();
        Ok(TotpEnrollment {
            secret_base32: totp.get_secret_base32(),
            otpauth_uri: uri,
            qr_svg,
        })
    }

    /// Confirms the authenticator with its first code; two-step sign-in is on from now, and the
    /// returned recovery codes are shown once.
    pub async fn confirm_totp(
        &self,
        p: &Principal,
        code: &str,
        client: &ClientInfo,
    ) -> Result<Vec<String>, IdentityError> {
        self.require_step_up(p).await?;
        let f = self
            .store()
            .totp_factor(p.account)
            .await?
            .ok_or(IdentityError::TwoStepNotEnabled)?;
        if f.confirmed_at.is_some() {
            return Err(IdentityError::TwoStepEnabled);
        }
        let secret = self.keys().open("totp", &f.secret_enc)?;
        let totp = self.totp(p.account, base64_decode(&secret)?)?;
        let step = self.totp_step(&totp, code).ok_or_else(|| IdentityError::Invalid {
            field: "code",
            message: "this authenticator code is wrong; check the device's clock and try the next one".into(),
        })?;
        let (codes, hashes) = self.new_recovery_codes(p.account);
        if !self
            .store()
            .confirm_totp(p.account, step, &hashes, self.now())
            .await?
        {
            return Err(IdentityError::TwoStepEnabled);
        }
        self.event(
            p.account,
            "two_step_enabled",
            client,
            Some(&p.session),
            Some("totp".into()),
        )
        .await?;
        Ok(codes)
    }

    /// Turns two-step sign-in off (step-up required).
    pub async fn disable_totp(
        &self,
        p: &Principal,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.require_step_up(p).await?;
        if !self.store().delete_totp(p.account).await? {
            return Err(IdentityError::TwoStepNotEnabled);
        }
        self.event(
            p.account,
            "two_step_disabled",
            client,
            Some(&p.session),
            Some("totp".into()),
        )
        .await
    }

    /// Replaces the recovery codes (step-up required); the old ones stop working.
    pub async fn regenerate_recovery_codes(
        &self,
        p: &Principal,
        client: &ClientInfo,
    ) -> Result<Vec<String>, IdentityError> {
        self.require_step_up(p).await?;
        if !self.two_step_status(p).await?.totp {
            return Err(IdentityError::TwoStepNotEnabled);
        }
        let (codes, hashes) = self.new_recovery_codes(p.account);
        self.store()
            .replace_recovery_codes(p.account, &hashes, self.now())
            .await?;
        self.event(
            p.account,
            "recovery_codes_regenerated",
            client,
            Some(&p.session),
            None,
        )
        .await?;
        Ok(codes)
    }

    fn new_recovery_codes(&self, account: AccountId) -> (Vec<String>, Vec<Vec<u8>>) {
        let mut rng = rand::rngs::OsRng;
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        let mut hashes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let raw: String = (0..10)
                .map(|_| char::from(RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())]))
                .collect();
            hashes.push(self.keys().code_hash(&format!("rc:{account}"), &raw));
            codes.push(format!("{}-{}", &raw[..5], &raw[5..]));
        }
        (codes, hashes)
    }

    /// After a right password on an account with two-step on: a challenge to finish with.
    pub(crate) async fn two_step_challenge(
        &self,
        account: AccountId,
    ) -> Result<SignInOutcome, IdentityError> {
        let now = self.now();
        let id = format!("ts_{}", random_token_string(18));
        let expires_at = now.plus(self.code_ttl());
        self.store()
            .insert_code(&NewCode {
                id: id.clone(),
                purpose: PURPOSE_TWO_STEP,
                account_id: Some(account),
                target_kind: "none",
                target_enc: None,
                target_bidx: self.keys().blind_index("login", &format!("id:{account}")),
                // No code is valid until one is sent on request.
                code_hash: self.keys().code_hash(&id, &random_token_string(16)),
                payload: None,
                created_at: now,
                expires_at,
            })
            .await?;
        let row = self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await?
            .ok_or(IdentityError::InvalidCredentials)?;
        let mut methods = vec!["totp", "recovery_code"];
        if row.email_enc.is_some() {
            methods.push("email");
        }
        if row.phone_enc.is_some() {
            methods.push("sms");
        }
        Ok(SignInOutcome::TwoStep {
            challenge_id: id,
            expires_at,
            methods,
        })
    }

    /// Sends a second-factor code for a pending two-step sign-in.
    pub async fn send_two_step_code(
        &self,
        challenge_id: &str,
        channel: CodeChannel,
        client: &ClientInfo,
    ) -> Result<CodeSent, IdentityError> {
        let row = self.pending_code(challenge_id, PURPOSE_TWO_STEP).await?;
        let account = row.account_id.ok_or(IdentityError::CodeExpired)?;
        let now = self.now();
        if row.expires_at <= now {
            return Err(IdentityError::CodeExpired);
        }
        if row.attempts >= self.inner.cfg.code_max_attempts {
            // Spent on wrong guesses: a new code would not bring them back.
            return Err(IdentityError::CodeLocked);
        }
        // The challenge's creation counts as its first "send"; after a real send, a cool-down.
        let ready = row.last_sent_at.plus(self.resend_cooldown());
        if row.send_count > 1 && ready > now {
            return Err(IdentityError::ResendTooSoon {
                retry_after: now.until(ready),
            });
        }
        if row.send_count > self.inner.cfg.codes_per_destination_per_hour {
            return Err(IdentityError::RateLimited {
                retry_after: now.until(row.expires_at),
            });
        }
        self.send_account_code(
            account,
            channel,
            PURPOSE_TWO_STEP,
            Some(&row.id),
            None,
            client,
            "finish signing in",
        )
        .await
    }

    /// Finishes a two-step sign-in with a second factor.
    pub async fn complete_two_step(
        &self,
        challenge_id: &str,
        factor: SecondFactor,
        client: &ClientInfo,
    ) -> Result<SignedIn, IdentityError> {
        client.device.check()?;
        let row = self.pending_code(challenge_id, PURPOSE_TWO_STEP).await?;
        let account = row.account_id.ok_or(IdentityError::CodeExpired)?;
        // Every guess, of any factor, takes one of the challenge's attempts before it is
        // compared, so guesses sent at once cannot outnumber them; and counts against the
        // account's back-off, so new challenges do not bring more guesses.
        self.check_backoff(account).await?;
        let method = match &factor {
            SecondFactor::Code(code) => {
                if let Err(e) = self.check_code(&row, code).await {
                    if matches!(
                        e,
                        IdentityError::InvalidCode { .. } | IdentityError::CodeLocked
                    ) {
                        self.second_factor_failed(account, client).await?;
                    }
                    return Err(e);
                }
                "code"
            }
            SecondFactor::Totp(code) => {
                let attempts = self.take_attempt(&row).await?;
                if self.check_totp(account, code).await.is_err() {
                    self.second_factor_failed(account, client).await?;
                    return Err(self.wrong_guess(attempts));
                }
                "totp"
            }
            SecondFactor::RecoveryCode(code) => {
                let attempts = self.take_attempt(&row).await?;
                let n = normalise_recovery(code);
                let ok = n.len() == 10
                    && self
                        .store()
                        .use_recovery_code(
                            account,
                            &self.keys().code_hash(&format!("rc:{account}"), &n),
                            self.now(),
                        )
                        .await?;
                if !ok {
                    self.second_factor_failed(account, client).await?;
                    return Err(self.wrong_guess(attempts));
                }
                "recovery_code"
            }
        };
        self.store().clear_login_failures(account).await?;
        if !self.store().consume_code(&row.id, self.now()).await? {
            return Err(IdentityError::CodeExpired);
        }
        let signed = self.open_session_alerting(account, client).await?;
        self.event(
            account,
            "two_step_sign_in",
            client,
            Some(&signed.session),
            Some(method.into()),
        )
        .await?;
        if method == "recovery_code" {
            let left = self.store().recovery_codes_left(account).await?;
            self.event(
                account,
                "recovery_code_used",
                client,
                Some(&signed.session),
                Some(format!("{left} left")),
            )
            .await?;
        }
        Ok(signed)
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
}

fn base64_decode(s: &str) -> Result<Vec<u8>, IdentityError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s)
        .map_err(|_| IdentityError::Internal("stored TOTP secret is corrupt".into()))
}

impl mica_core::notices::OwnerNotices for Identity {
    fn tell<'a>(
        &'a self,
        account: AccountId,
        subject: &'a str,
        text: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.tell_owner(account, subject, text))
    }
}

/// Notices about a lost device that go by mail only (see [`Identity::mail_owner`]).
const MAIL_ONLY: &[&str] = &[
    "device_erase_requested",
    "device_erase_cancelled",
    "device_lost_mode_cancelled",
];

/// The security events whose owner is told (a subject, and what happened): changes to the
/// factors and ways back into the account, to what can reach its data, and to the devices
/// that Find Device protects. Password changes and resets, new sign-ins and new addresses
/// send their own messages; a step-up or a sign-out tells nothing an attacker could hide.
fn notice(kind: &str, detail: Option<&str>) -> Option<(&'static str, String)> {
    let device = || match detail {
        Some(d) if !d.is_empty() => format!("the device \"{d}\""),
        _ => "a device".to_owned(),
    };
    Some(match kind {
        "two_step_enabled" => (
            "two-step verification turned on",
            "Two-step verification was turned on".to_owned(),
        ),
        "two_step_disabled" => (
            "two-step verification turned off",
            "Two-step verification was turned off".to_owned(),
        ),
        "recovery_factor_added" => (
            "a recovery address was added",
            "A recovery email or phone number was added".to_owned(),
        ),
        "recovery_factor_removed" => (
            "a recovery address was removed",
            "A recovery email or phone number was removed".to_owned(),
        ),
        "recovery_codes_regenerated" => (
            "new recovery codes",
            "New recovery codes were made, and the old ones no longer work".to_owned(),
        ),
        "security_questions_set" => (
            "security questions changed",
            "The security questions were set".to_owned(),
        ),
        "passkey_added" => ("a passkey was added", "A passkey was added".to_owned()),
        "passkey_removed" => ("a passkey was removed", "A passkey was removed".to_owned()),
        "app_password_created" => (
            "an app password was created",
            "An app password, which opens your files, contacts and calendars to a program such as a file manager or a calendar app, was created"
                .to_owned(),
        ),
        "export_requested" => (
            "a copy of your data was requested",
            "A copy of all the data in your account was requested".to_owned(),
        ),
        "find_device_off" => (
            "Find Device turned off",
            format!("Find Device was turned off for {}", device()),
        ),
        "device_removed" => (
            "a device was removed",
            format!(
                "{} was removed from your account, and is no longer bound to it",
                capitalised(&device())
            ),
        ),
        "device_erase_requested" => (
            "a device will be erased",
            format!("An erase was sent to {}", device()),
        ),
        "device_erase_cancelled" => (
            "an erase was cancelled",
            format!("The erase sent to {} was cancelled", device()),
        ),
        "recovery_cancelled" => (
            "a request to recover your account was cancelled",
            "A request to recover your account without its sign-in factors was cancelled"
                .to_owned(),
        ),
        "app_access_granted" => (
            "an app can now sign you in",
            format!(
                "{} can now sign you in with your account and see what you allowed it. If this \
                 was not you, take its access away on the Apps page",
                match detail {
                    Some(d) if !d.is_empty() => format!("The app \"{d}\""),
                    _ => "An app".to_owned(),
                }
            ),
        ),
        "device_lost_mode_cancelled" => (
            "lost mode was cancelled",
            format!("Lost mode sent to {} was cancelled", device()),
        ),
        _ => return None,
    })
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
