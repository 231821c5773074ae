//! Identity: accounts, verification codes, passwords, sessions and abuse limits (PRODUCT.md ID-1 … ID-5,
//! ID-11, ID-12, ID-17).
//!
//! Architecture invariants:
//! - no HTTP here: callers pass a [`ClientInfo`] and get domain values or an [`IdentityError`]
//!   that knows its stable code and HTTP status;
//! - every answer about an identifier that might not exist (sign-in, forgot password, sign-up of a
//!   taken address) is the same, in body and in cost, whether or not the account exists;
//! - secrets exist in plaintext only in memory: codes and tokens are stored as hashes, passwords as
//!   argon2id, email and phone sealed with a blind index.

pub mod account_recovery;
pub mod agent;
pub mod app_passwords;
mod cache;
mod deletion;
mod error;
pub mod export;
pub mod factors;
mod identifiers;
pub mod limits;
pub mod oidc;
pub mod operator;
pub mod passkeys;
pub mod password;
pub mod profile;
mod recovery;
mod security;
mod sessions;
mod signup;

use std::sync::Arc;
use std::time::Duration;

use mica_core::crypto::Keys;
use mica_core::{AccountId, Clock, Email, Login, PhoneE164, Timestamp};
use mica_notify::Notifier;
use mica_store::{AccountRow, LookupBy, Store};

pub use account_recovery::{
    FinishStarted, RecoveryRequestView, RecoveryReview, RecoveryStarted, RecoveryStatus,
};
pub use error::IdentityError;
pub use factors::RecoveryOverview;
pub use limits::Rate;
pub use passkeys::{PasskeyCeremony, PasskeyInfo, RelyingParty};
pub use password::HashCost;
pub use profile::{CheckupStep, Profile};
pub use recovery::ResetStarted;
pub use security::{
    CodeChannel, CodeSent, SecondFactor, SecurityEvent, SignInOutcome, StepUpProof, TotpEnrollment,
    TwoStepStatus,
};
pub use sessions::{LoginRecord, Principal, SessionInfo, SignedIn};
pub use signup::{SignupStarted, SignupTarget};
/// WebAuthn types that cross the API.
pub use webauthn_rs::prelude as webauthn;

/// A stable text key for what was typed in a login box (never logged: it is personal data).
pub(crate) fn login_key(login: &Login) -> String {
    match login {
        Login::Id(id) => format!("id:{id}"),
        Login::Email(e) => format!("email:{}", e.as_str()),
        Login::Phone(p) => format!("phone:{}", p.as_str()),
    }
}

/// Tunables. Defaults are what production should run with.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Lifetime of a one-time code, in seconds.
    pub code_ttl_secs: u64,
    /// Wrong guesses after which a code is dead.
    pub code_max_attempts: i64,
    /// Minimum time between two codes to the same destination, in seconds.
    pub code_resend_cooldown_secs: u64,
    /// At most this many codes to one destination per hour.
    pub codes_per_destination_per_hour: i64,
    /// Access-token lifetime, in seconds.
    pub access_token_ttl_secs: u64,
    /// Session (refresh-token family) lifetime, in days.
    pub session_ttl_days: u64,
    /// Consecutive wrong passwords before the account's sign-in backs off.
    pub signin_failures_before_backoff: i64,
    pub hash_cost: HashCost,
    /// Sign-in attempts per client IP.
    pub signin_per_ip: Rate,
    /// Codes sent (sign-up, reset, resend) per client IP.
    pub codes_per_ip: Rate,
    /// Sign-ups started per client IP.
    pub signups_per_ip: Rate,
    /// Refreshes per client IP.
    pub refresh_per_ip: Rate,
    /// Name shown in messages.
    pub service_name: String,
    /// How long a request to recover an account whose every factor is lost waits (while the
    /// owner is told and can cancel it) before an operator may approve it, in hours.
    pub recovery_wait_hours: u64,
    /// Days an approved recovery can be finished in.
    pub recovery_finish_days: u64,
    /// Where to tell operators that recovery requests are ready for review (none: the log).
    pub recovery_review_email: Option<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            code_ttl_secs: 600,
            code_max_attempts: 5,
            code_resend_cooldown_secs: 60,
            codes_per_destination_per_hour: 5,
            access_token_ttl_secs: 900,
            session_ttl_days: 90,
            signin_failures_before_backoff: 5,
            hash_cost: HashCost::default(),
            signin_per_ip: Rate::new(30, Duration::from_secs(300)),
            codes_per_ip: Rate::new(20, Duration::from_secs(3600)),
            signups_per_ip: Rate::new(10, Duration::from_secs(3600)),
            refresh_per_ip: Rate::new(120, Duration::from_secs(60)),
            service_name: "Mica".into(),
            recovery_wait_hours: 168,
            recovery_finish_days: 14,
            recovery_review_email: None,
        }
    }
}

/// Who is calling, as the transport saw them.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: String,
    pub user_agent: String,
    pub device: DeviceInfo,
}

/// What a client declares about the device it runs on.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// e.g. "Pixel 8", "ThinkPad X1".
    pub model: Option<String>,
    /// e.g. "Android 15", "Debian 13".
    pub os_version: Option<String>,
    /// e.g. "mica-cli 0.1", "DAVx5 4.4".
    pub client: Option<String>,
}

impl DeviceInfo {
    fn check(&self) -> Result<(), IdentityError> {
        for (field, v) in [
            ("device.model", &self.model),
            ("device.os_version", &self.os_version),
            ("device.client", &self.client),
        ] {
            if let Some(v) = v {
                if v.chars().count() > 100 || v.chars().any(char::is_control) {
                    return Err(IdentityError::Invalid {
                        field,
                        message: "at most 100 printable characters".into(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The account as its owner sees it.
#[derive(Debug, Clone)]
pub struct AccountView {
    pub id: AccountId,
    pub email: Option<Email>,
    pub phone: Option<PhoneE164>,
    pub created_at: Timestamp,
    pub password_changed_at: Timestamp,
}

/// The identity service. Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    keys: Arc<Keys>,
    notifier: Notifier,
    clock: Arc<dyn Clock>,
    hasher: password::PasswordHasher,
    cfg: IdentityConfig,
    limits: Limits,
    revoked: sessions::Revocations,
    views: cache::ViewCache,
    jobs: Arc<tokio::sync::Notify>,
    exports_dir: std::path::PathBuf,
    relying_party: Option<passkeys::RelyingParty>,
    areas: std::sync::RwLock<Vec<Arc<dyn export::AccountArea>>>,
    /// Where the account's connected devices are told things (command and sync channels).
    device_notices: std::sync::RwLock<Vec<Arc<dyn mica_core::notices::DeviceNotices>>>,
    /// The OpenID provider's signing key, as this node last read it.
    oidc_keys: oidc::KeyCache,
}

struct Limits {
    signin_ip: limits::Limiter,
    codes_ip: limits::Limiter,
    signups_ip: limits::Limiter,
    refresh_ip: limits::Limiter,
    unknown_logins: limits::FailureBackoff,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// What the identity service is built from.
pub struct IdentitySetup {
    pub store: Store,
    pub keys: Arc<Keys>,
    pub notifier: Notifier,
    pub clock: Arc<dyn Clock>,
    pub cfg: IdentityConfig,
    /// Concurrent argon2id computations (the number of cores).
    pub hash_slots: usize,
    /// Where export archives are written.
    pub exports_dir: std::path::PathBuf,
    /// Who passkeys are created for; `None` turns passkeys off.
    pub relying_party: Option<passkeys::RelyingParty>,
}

impl Identity {
    pub async fn new(setup: IdentitySetup) -> Result<Identity, IdentityError> {
        let IdentitySetup {
            store,
            keys,
            notifier,
            clock,
            cfg,
            hash_slots,
            exports_dir,
            relying_party,
        } = setup;
        let hasher = password::PasswordHasher::new(cfg.hash_cost, hash_slots)?;
        let limits = Limits {
            signin_ip: limits::Limiter::new(cfg.signin_per_ip, clock.clone()),
            codes_ip: limits::Limiter::new(cfg.codes_per_ip, clock.clone()),
            signups_ip: limits::Limiter::new(cfg.signups_per_ip, clock.clone()),
            refresh_ip: limits::Limiter::new(cfg.refresh_per_ip, clock.clone()),
            unknown_logins: limits::FailureBackoff::default(),
        };
        let revoked = sessions::Revocations::default();
        let this = Identity {
            inner: Arc::new(Inner {
                store,
                keys,
                notifier,
                clock,
                hasher,
                cfg,
                limits,
                revoked,
                views: cache::ViewCache::new(Duration::from_secs(30), 100_000),
                jobs: Arc::new(tokio::sync::Notify::new()),
                exports_dir,
                relying_party,
                areas: std::sync::RwLock::default(),
                device_notices: std::sync::RwLock::default(),
                oidc_keys: oidc::KeyCache::default(),
            }),
        };
        this.load_revocations().await?;
        Ok(this)
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.inner.cfg
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The database, for the operator's tools that work beside identity (`mica admin`).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The account behind a sign-in identifier.
    async fn find_account(&self, login: &Login) -> Result<Option<AccountRow>, IdentityError> {
        let row = match login {
            Login::Id(id) => self.store().account(LookupBy::Id(*id)).await?,
            Login::Email(e) => {
                let b = self.keys().blind_index("email", e.as_str());
                self.store().account(LookupBy::EmailIndex(&b)).await?
            }
            Login::Phone(p) => {
                let b = self.keys().blind_index("phone", p.as_str());
                self.store().account(LookupBy::PhoneIndex(&b)).await?
            }
        };
        Ok(row)
    }

    /// Decrypts an account's personal data for its owner.
    fn view(&self, row: &AccountRow) -> Result<AccountView, IdentityError> {
        let email = row
            .email_enc
            .as_deref()
            .map(|b| self.keys().open("email", b))
            .transpose()?
            .map(|s| Email::parse(&s))
            .transpose()
            .map_err(|e| IdentityError::Internal(format!("stored email: {e}")))?;
        let phone = row
            .phone_enc
            .as_deref()
            .map(|b| self.keys().open("phone", b))
            .transpose()?
            .map(|s| PhoneE164::parse(&s))
            .transpose()
            .map_err(|e| IdentityError::Internal(format!("stored phone: {e}")))?;
        Ok(AccountView {
            id: row.id,
            email,
            phone,
            created_at: row.created_at,
            password_changed_at: row.password_changed_at,
        })
    }

    /// The signed-in person's account. Served from a short-lived per-node cache of decrypted
    /// views (dropped on every local change of the account), so the hottest authenticated read
    /// costs neither a database round trip nor a decryption.
    pub async fn me(&self, p: &Principal) -> Result<Arc<AccountView>, IdentityError> {
        let now = self.now();
        if let Some(v) = self.inner.views.get(p.account, now) {
            return Ok(v);
        }
        let row = self
            .store()
            .account(LookupBy::Id(p.account))
            .await?
            .ok_or(IdentityError::Unauthenticated)?;
        let view = Arc::new(self.view(&row)?);
        self.inner.views.put(p.account, view.clone(), now);
        Ok(view)
    }

    /// Adds a way to reach the account's connected devices (wired at start-up).
    pub fn add_device_notices(&self, n: Arc<dyn mica_core::notices::DeviceNotices>) {
        if let Ok(mut v) = self.inner.device_notices.write() {
            v.push(n);
        }
    }

    /// Tells the account's devices: the notice is stored (sealed) for its linked devices,
    /// each sent it when it next connects until `until` or until what it is `about` is
    /// withdrawn ([`Store::withdraw_device_notices`]), then sent at once to every device and
    /// app connected now (see [`mica_core::notices::DeviceNotices`]). Best effort: a notice
    /// that cannot be stored is still sent live, and what matters also goes by mail or SMS.
    pub(crate) async fn tell_devices(
        &self,
        account: AccountId,
        kind: &str,
        body: mica_core::notices::NoticeBody,
        about: Option<&str>,
        until: Timestamp,
    ) {
        let now = self.now();
        let id = format!("ntc_{}", mica_core::crypto::random_token_string(16));
        match serde_json::to_string(&body) {
            Ok(json) => {
                let sealed = self.keys().seal(mica_core::notices::NOTICE_FIELD, &json);
                let stored = self
                    .store()
                    .insert_device_notice(&mica_store::NewNotice {
                        id: &id,
                        account,
                        kind,
                        body: &sealed,
                        about,
                        created_at: now,
                        expires_at: until,
                    })
                    .await;
                if let Err(e) = stored {
                    tracing::warn!(error = %e, %account, "cannot store a notice for the devices");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a notice for the devices"),
        }
        let notice = mica_core::notices::DeviceNotice {
            id,
            kind: kind.to_owned(),
            title: body.title,
            text: body.text,
            sent_at: now.to_rfc3339(),
        };
        let targets = match self.inner.device_notices.read() {
            Ok(v) => v.clone(),
            Err(_) => return,
        };
        for t in targets {
            t.tell_devices(account, &notice);
        }
    }

    /// Waits (at most `limit`) for the messages queued so far to be delivered; an error when
    /// one could not be. For a process about to exit.
    pub async fn flush_messages(&self, limit: Duration) -> Result<(), mica_notify::NotifyError> {
        self.inner.notifier.flush(limit).await
    }

    /// Where email and SMS go: `smtp` / `outbox`, `webhook` / `outbox`.
    pub fn message_routes(&self) -> (&'static str, &'static str) {
        self.inner.notifier.routes()
    }

    /// Forgets the cached view of an account after it changed.
    pub(crate) fn account_changed(&self, id: AccountId) {
        self.inner.views.remove(id);
    }

    /// Deletes expired codes; run periodically.
    pub async fn purge_expired(&self) -> Result<u64, IdentityError> {
        // Keep expired codes a day: they still count towards per-destination limits.
        let cutoff = self.now().minus(Duration::from_secs(86_400));
        let codes = self.store().purge_codes(cutoff).await?;
        let codes = codes + self.store().purge_webauthn_challenges(self.now()).await?;
        let codes = codes + self.purge_oidc().await?;
        Ok(codes + self.purge_exports().await?)
    }
}
