//! Sign-in, sessions and tokens (ID-2, ID-5, ID-11, ID-17).
//!
//! An access token is short-lived and self-contained (HMAC-signed), so checking it costs no
//! database round trip; revoking its session takes effect at once because every node keeps the
//! ids of sessions revoked within the last access-token lifetime, loaded at start and updated on
//! every revocation. A refresh token is opaque, stored as a hash, and single use: using one twice
//! revokes its whole family (the session).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use mica_core::crypto::{random_token_string, token_hash, AccessClaims};
use mica_core::{AccountId, Login, SessionId, Timestamp};
use mica_store::{LoginEventRow, NewSession, RefreshOutcome};
use secrecy::SecretString;

use crate::{ClientInfo, Identity, IdentityError};

/// How long a browser stays signed in at most: a working day, not an app's months.
pub const WEB_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub account: AccountId,
    pub session: SessionId,
}

/// Tokens handed out by a successful sign-in or refresh.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub account: AccountId,
    pub session: SessionId,
    pub access_token: String,
    pub access_expires_at: Timestamp,
    pub refresh_token: String,
    pub session_expires_at: Timestamp,
}

/// A session as its owner sees it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: SessionId,
    pub current: bool,
    pub created_at: Timestamp,
    pub last_used_at: Timestamp,
    pub expires_at: Timestamp,
    pub ip: String,
    pub user_agent: String,
    pub device_model: Option<String>,
    pub os_version: Option<String>,
    pub client: Option<String>,
}

/// One sign-in attempt as its owner sees it.
pub type LoginRecord = LoginEventRow;

/// Sessions revoked recently enough that their access tokens could still be unexpired.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    sessions: RwLock<HashMap<SessionId, Timestamp>>,
}

impl Revocations {
    fn add(&self, ids: impl IntoIterator<Item = SessionId>, at: Timestamp, keep: Duration) {
        self.add_at(ids.into_iter().map(|id| (id, at)), at, keep);
    }

    /// Adds sessions revoked at their own times, under one lock; forgets those older than
    /// `keep` before `now` once the set grows large.
    fn add_at(
        &self,
        revoked: impl IntoIterator<Item = (SessionId, Timestamp)>,
        now: Timestamp,
        keep: Duration,
    ) {
        let mut map = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        map.extend(revoked);
        if map.len() > 10_000 {
            let cutoff = now.minus(keep);
            map.retain(|_, t| *t >= cutoff);
        }
    }
    pub(crate) fn contains(&self, id: &SessionId) -> bool {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }
}

const LOCK_BASE: Duration = Duration::from_secs(30);
const LOCK_MAX: Duration = Duration::from_secs(3600);

fn backoff(failures: i64, threshold: i64) -> Option<Duration> {
    if failures < threshold {
        return None;
    }
    let exp = u32::try_from((failures - threshold).min(16)).unwrap_or(16);
    Some(LOCK_BASE.saturating_mul(1u32 << exp).min(LOCK_MAX))
}

impl Identity {
    /// Counts a wrong second factor (a two-step guess, an authenticator code at step-up) as a
    /// failed sign-in of the account, whose back-off then holds for every later guess: the
    /// guesses at one account's second factor have one budget, whatever the challenge, session
    /// or address they come from.
    pub(crate) async fn second_factor_failed(
        &self,
        account: AccountId,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.sign_in_failed(account, "wrong_second_factor", client)
            .await
    }

    /// Puts a sign-in that opened no session in the account's sign-in history.
    async fn record_refused_sign_in(
        &self,
        account: AccountId,
        outcome: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.store()
            .record_login_event(
                account,
                &LoginEventRow {
                    at: self.now(),
                    outcome: outcome.into(),
                    ip: client.ip.clone(),
                    user_agent: client.user_agent.clone(),
                    device_model: client.device.model.clone(),
                    os_version: client.device.os_version.clone(),
                    client: client.device.client.clone(),
                    session_id: None,
                },
            )
            .await?;
        Ok(())
    }

    /// Records a failed sign-in of the account (`outcome` in its sign-in history) and starts
    /// or lengthens its back-off once the failures reach the threshold.
    async fn sign_in_failed(
        &self,
        account: AccountId,
        outcome: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        let now = self.now();
        let n = self.store().record_login_failure(account).await?;
        self.record_refused_sign_in(account, outcome, client)
            .await?;
        if let Some(d) = backoff(n, self.inner.cfg.signin_failures_before_backoff) {
            self.store()
                .lock_account_until(account, now.plus(d))
                .await?;
            tracing::warn!(%account, failures = n, outcome, "sign-in backing off after repeated failures");
        }
        Ok(())
    }

    /// Refuses a second-factor guess while the account is backing off.
    pub(crate) async fn check_backoff(&self, account: AccountId) -> Result<(), IdentityError> {
        let now = self.now();
        let locked_until = self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await?
            .map_or(Timestamp(0), |a| a.locked_until);
        if locked_until > now {
            return Err(IdentityError::SignInBackoff {
                retry_after: now.until(locked_until),
            });
        }
        Ok(())
    }

    /// Reads the sessions revoked within an access token's lifetime — by this process or any
    /// other — so their tokens stop working here. Run every few seconds by the server.
    pub async fn refresh_revocations(&self) -> Result<(), IdentityError> {
        self.load_revocations().await
    }

    pub(crate) async fn load_revocations(&self) -> Result<(), IdentityError> {
        let keep = self.access_ttl();
        let since = self.now().minus(keep);
        let sessions = self.store().recent_revocations(since).await?;
        self.inner.revoked.add_at(sessions, self.now(), keep);
        Ok(())
    }

    pub(crate) fn access_ttl(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.access_token_ttl_secs)
    }

    pub(crate) fn note_revoked(&self, ids: Vec<SessionId>) {
        self.inner.revoked.add(ids, self.now(), self.access_ttl());
    }

    /// Signs in with an account number, email or phone number and the password.
    pub async fn sign_in(
        &self,
        login: &str,
        password: SecretString,
        client: &ClientInfo,
    ) -> Result<crate::SignInOutcome, IdentityError> {
        client.device.check()?;
        self.limit(&self.inner.limits.signin_ip, &client.ip)?;
        let login = Login::parse(login)?;
        let account = self.find_account(&login).await?;
        let now = self.now();
        let unknown_key = crate::login_key(&login);
        let locked_until = match &account {
            Some(a) => a.locked_until,
            None => self.inner.limits.unknown_logins.locked_until(&unknown_key),
        };
        if locked_until > now {
            return Err(IdentityError::SignInBackoff {
                retry_after: now.until(locked_until),
            });
        }
        let ok = self
            .inner
            .hasher
            .verify(
                &password,
                account.as_ref().map(|a| a.password_hash.as_str()),
            )
            .await?;
        let threshold = self.inner.cfg.signin_failures_before_backoff;
        match account {
            Some(a) if ok && a.status == "active" => {
                let two_step = self
                    .store()
                    .totp_factor(a.id)
                    .await?
                    .is_some_and(|f| f.confirmed_at.is_some());
                if two_step {
                    // The failures are cleared by the second factor, not by the password: each
                    // challenge's five guesses must not come back with every right password.
                    return self.two_step_challenge(a.id).await;
                }
                if a.failed_logins != 0 {
                    self.store().clear_login_failures(a.id).await?;
                }
                self.open_session_alerting(a.id, client)
                    .await
                    .map(crate::SignInOutcome::SignedIn)
            }
            Some(a) if ok && a.status == "suspended" => {
                // Said only to the right password; not a failure that builds a back-off.
                self.record_refused_sign_in(a.id, "account_suspended", client)
                    .await?;
                Err(IdentityError::AccountSuspended)
            }
            Some(a) => {
                let outcome = if ok {
                    "account_inactive"
                } else {
                    "wrong_password"
                };
                self.sign_in_failed(a.id, outcome, client).await?;
                Err(IdentityError::InvalidCredentials)
            }
            None => {
                let n = self
                    .inner
                    .limits
                    .unknown_logins
                    .record_failure(&unknown_key);
                if let Some(d) = backoff(n, threshold) {
                    self.inner
                        .limits
                        .unknown_logins
                        .lock(&unknown_key, now.plus(d));
                }
                Err(IdentityError::InvalidCredentials)
            }
        }
    }

    /// Opens a session for a device its owner approved from one of their signed-in sessions
    /// (linking by code): the device never saw the password; the approval, given after a
    /// step-up, stands for the sign-in. The owner is alerted as for any sign-in from a new
    /// device. Fails with `Unauthenticated` when the account is no longer active.
    pub async fn open_approved_session(
        &self,
        account: AccountId,
        client: &ClientInfo,
    ) -> Result<SignedIn, IdentityError> {
        client.device.check()?;
        if !self.is_active(account).await? {
            return Err(IdentityError::Unauthenticated);
        }
        self.open_session_alerting(account, client).await
    }

    /// Whether this session of the account still stands (not signed out, revoked or ended by
    /// a password change).
    pub async fn session_live(
        &self,
        account: AccountId,
        session: &SessionId,
    ) -> Result<bool, IdentityError> {
        if self.inner.revoked.contains(session) {
            return Ok(false);
        }
        Ok(self
            .store()
            .session_step_up(account, session)
            .await?
            .is_some())
    }

    /// Whether the account exists and is active (not suspended, not being deleted).
    pub(crate) async fn is_active(&self, account: AccountId) -> Result<bool, IdentityError> {
        Ok(self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await?
            .is_some_and(|a| a.status == "active"))
    }

    /// Opens a session after a sign-in, and alerts the owner when the client is one the account
    /// never signed in from (ID-11).
    pub(crate) async fn open_session_alerting(
        &self,
        account: AccountId,
        client: &ClientInfo,
    ) -> Result<SignedIn, IdentityError> {
        let ua = truncate(&client.user_agent, 512);
        let seen = self
            .store()
            .seen_device(account, &ua, client.device.model.as_deref())
            .await?;
        let signed = self.open_session(account, client).await?;
        if !seen {
            self.new_device_alert(account, client).await?;
        }
        Ok(signed)
    }

    async fn new_device_alert(
        &self,
        account: AccountId,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        let Some(row) = self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await?
        else {
            return Ok(());
        };
        let view = self.view(&row)?;
        let name = &self.inner.cfg.service_name;
        let device = match (&client.device.model, &client.device.os_version) {
            (Some(m), Some(o)) => format!("{m} ({o})"),
            (Some(m), None) => m.clone(),
            _ if !client.user_agent.is_empty() => client.user_agent.chars().take(80).collect(),
            _ => "an unknown device".into(),
        };
        let text = format!(
            "Your {name} account {account} was just signed in to from a new device: {device}, IP address {}, at {}. \
             If this was you, there is nothing to do. If not, change your password now and sign out everywhere.",
            client.ip,
            self.now()
        );
        if let Some(e) = view.email {
            self.inner.notifier.dispatch(mica_notify::Message::Email {
                to: e,
                subject: format!("New sign-in to your {name} account"),
                body: text,
            });
        } else if let Some(p) = view.phone {
            self.inner
                .notifier
                .dispatch(mica_notify::Message::Sms { to: p, text });
        }
        Ok(())
    }

    /// Opens a new session for an account that just proved who it is.
    pub(crate) async fn open_session(
        &self,
        account: AccountId,
        client: &ClientInfo,
    ) -> Result<SignedIn, IdentityError> {
        let now = self.now();
        let session = SessionId::random();
        let refresh = format!("mrt_{}", random_token_string(32));
        let expires_at = now.plus(Duration::from_secs(
            self.inner.cfg.session_ttl_days * 86_400,
        ));
        let opened = self
            .store()
            .create_session(
                &NewSession {
                    id: session.clone(),
                    account_id: account,
                    created_at: now,
                    expires_at,
                    ip: client.ip.clone(),
                    user_agent: truncate(&client.user_agent, 512),
                    device_model: client.device.model.clone(),
                    os_version: client.device.os_version.clone(),
                    client: client.device.client.clone(),
                    oidc: None,
                },
                &token_hash(&refresh),
            )
            .await?;
        if !opened {
            // Suspended or being deleted since the caller looked (a two-step challenge can
            // outlive a suspension; a sign-in can race one).
            let suspended = self
                .store()
                .account(mica_store::LookupBy::Id(account))
                .await?
                .is_some_and(|a| a.status == "suspended");
            return Err(if suspended {
                IdentityError::AccountSuspended
            } else {
                IdentityError::Unauthenticated
            });
        }
        Ok(self.tokens(account, session, refresh, expires_at))
    }

    fn tokens(
        &self,
        account: AccountId,
        session: SessionId,
        refresh: String,
        session_expires_at: Timestamp,
    ) -> SignedIn {
        let now = self.now();
        let access_expires_at = now.plus(self.access_ttl()).min(session_expires_at);
        let access_token = self.keys().sign_access_token(&AccessClaims {
            account,
            session: session.clone(),
            issued_at: now,
            expires_at: access_expires_at,
        });
        SignedIn {
            account,
            session,
            access_token,
            access_expires_at,
            refresh_token: refresh,
            session_expires_at,
        }
    }

    /// Exchanges a refresh token for a new pair.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: &ClientInfo,
    ) -> Result<SignedIn, IdentityError> {
        self.limit(&self.inner.limits.refresh_ip, &client.ip)?;
        if !refresh_token.starts_with("mrt_") || refresh_token.len() > 100 {
            return Err(IdentityError::InvalidRefreshToken);
        }
        let next = format!("mrt_{}", random_token_string(32));
        let now = self.now();
        match self
            .store()
            .rotate_refresh(
                &token_hash(refresh_token),
                &token_hash(&next),
                None,
                now,
                &client.ip,
                |_| true,
            )
            .await?
        {
            RefreshOutcome::Rotated(s) => Ok(self.tokens(s.account_id, s.id, next, s.expires_at)),
            RefreshOutcome::Reused { session, account } => {
                tracing::warn!(%account, "refresh token reused; session revoked");
                self.note_revoked(vec![session.clone()]);
                self.event(
                    account,
                    "refresh_token_reused",
                    client,
                    Some(&session),
                    Some("session revoked".into()),
                )
                .await?;
                Err(IdentityError::RefreshTokenReused)
            }
            RefreshOutcome::Invalid | RefreshOutcome::Refused => {
                Err(IdentityError::InvalidRefreshToken)
            }
        }
    }

    /// Checks an access token. No database access.
    pub fn authenticate(&self, access_token: &str) -> Result<Principal, IdentityError> {
        let claims = self
            .keys()
            .verify_access_token(access_token)
            .ok_or(IdentityError::Unauthenticated)?;
        if claims.expires_at <= self.now() {
            return Err(IdentityError::TokenExpired);
        }
        if self.inner.revoked.contains(&claims.session) {
            return Err(IdentityError::Unauthenticated);
        }
        Ok(Principal {
            account: claims.account,
            session: claims.session,
        })
    }

    /// Makes a session that was just opened a browser's: it ends within [`WEB_SESSION_TTL`]
    /// (a browser may be someone else's computer), and it is held by the returned cookie value,
    /// good until then. Unlike an access token the cookie lives as long as the session, so
    /// [`Identity::authenticate_web`] checks the session on every request. (The session's
    /// refresh token is never handed out.)
    pub async fn open_web_session(
        &self,
        s: &SignedIn,
    ) -> Result<(String, Timestamp), IdentityError> {
        let expires_at = s.session_expires_at.min(self.now().plus(WEB_SESSION_TTL));
        self.store()
            .limit_session_expiry(s.account, &s.session, expires_at)
            .await?;
        let cookie = self.keys().sign_web_session(&AccessClaims {
            account: s.account,
            session: s.session.clone(),
            issued_at: self.now(),
            expires_at,
        });
        Ok((cookie, expires_at))
    }

    /// Checks a browser's session cookie: its signature, its expiry, and that its session still
    /// stands (one database read, so signing out, a revocation from another device or node, a
    /// password change or a suspension ends the browser's session at once).
    pub async fn authenticate_web(&self, cookie: &str) -> Result<Principal, IdentityError> {
        let claims = self
            .keys()
            .verify_web_session(cookie)
            .ok_or(IdentityError::Unauthenticated)?;
        if claims.expires_at <= self.now() {
            return Err(IdentityError::TokenExpired);
        }
        if !self.session_live(claims.account, &claims.session).await? {
            return Err(IdentityError::Unauthenticated);
        }
        Ok(Principal {
            account: claims.account,
            session: claims.session,
        })
    }

    /// The anti-forgery token the forms of this browser session carry.
    pub fn csrf_token(&self, p: &Principal) -> String {
        self.keys().csrf_token(&p.session)
    }

    /// Whether a form's anti-forgery token is this session's.
    pub fn csrf_ok(&self, p: &Principal, token: &str) -> bool {
        self.keys().csrf_matches(&p.session, token)
    }

    pub async fn sessions(&self, p: &Principal) -> Result<Vec<SessionInfo>, IdentityError> {
        let rows = self.store().active_sessions(p.account, self.now()).await?;
        Ok(rows
            .into_iter()
            .map(|s| SessionInfo {
                current: s.id == p.session,
                id: s.id,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                expires_at: s.expires_at,
                ip: s.ip,
                user_agent: s.user_agent,
                device_model: s.device_model,
                os_version: s.os_version,
                client: s.client,
            })
            .collect())
    }

    /// Revokes one of the caller's sessions (possibly the current one: signing out).
    pub async fn revoke_session(
        &self,
        p: &Principal,
        id: &SessionId,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        if !self
            .store()
            .revoke_session(p.account, id, self.now())
            .await?
        {
            return Err(IdentityError::NotFound);
        }
        self.note_revoked(vec![id.clone()]);
        let kind = if *id == p.session {
            "signed_out"
        } else {
            "session_revoked"
        };
        self.event(
            p.account,
            kind,
            client,
            Some(&p.session),
            Some(id.0.clone()),
        )
        .await
    }

    /// Signs the account out of every session, this one included.
    pub async fn sign_out_everywhere(
        &self,
        p: &Principal,
        client: &ClientInfo,
    ) -> Result<u64, IdentityError> {
        let ids = self
            .store()
            .revoke_all_sessions(p.account, self.now())
            .await?;
        let n = ids.len() as u64;
        self.note_revoked(ids);
        let detail = Some(format!("{n} session(s)"));
        self.event(
            p.account,
            "signed_out_everywhere",
            client,
            Some(&p.session),
            detail,
        )
        .await?;
        Ok(n)
    }

    pub async fn login_history(
        &self,
        p: &Principal,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, IdentityError> {
        Ok(self
            .store()
            .login_events(p.account, limit.clamp(1, 500))
            .await?)
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl Identity {
    /// Checks an account's password where no session is at hand (a device leaving lost mode):
    /// rate-limited per address like a sign-in, and wrong guesses count toward the account's
    /// sign-in back-off.
    pub async fn check_password(
        &self,
        account: AccountId,
        password: SecretString,
        ip: &str,
    ) -> Result<(), IdentityError> {
        self.limit(&self.inner.limits.signin_ip, ip)?;
        let row = self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await?
            // A suspended owner still unlocks their own device; a deleted account has none.
            .filter(|a| a.status != "deleting")
            .ok_or(IdentityError::InvalidCredentials)?;
        let now = self.now();
        if row.locked_until > now {
            return Err(IdentityError::SignInBackoff {
                retry_after: now.until(row.locked_until),
            });
        }
        let ok = self
            .inner
            .hasher
            .verify(&password, Some(row.password_hash.as_str()))
            .await?;
        if ok {
            if row.failed_logins != 0 {
                self.store().clear_login_failures(account).await?;
            }
            return Ok(());
        }
        let n = self.store().record_login_failure(account).await?;
        if let Some(d) = backoff(n, self.inner.cfg.signin_failures_before_backoff) {
            self.store()
                .lock_account_until(account, now.plus(d))
                .await?;
        }
        Err(IdentityError::InvalidCredentials)
    }

    /// Ends a session for the system rather than its holder (its device was removed or
    /// erased), and records why in the security log.
    pub async fn end_session(
        &self,
        account: AccountId,
        id: &SessionId,
        kind: &str,
        client: &ClientInfo,
        detail: Option<String>,
    ) -> Result<(), IdentityError> {
        if self.store().revoke_session(account, id, self.now()).await? {
            self.note_revoked(vec![id.clone()]);
        }
        self.event(account, kind, client, None, detail).await
    }

    /// Records a security event (devices linked, removed, erased, Find Device turned off).
    pub async fn record_event(
        &self,
        account: AccountId,
        kind: &str,
        client: &ClientInfo,
        session: Option<&SessionId>,
        detail: Option<String>,
    ) -> Result<(), IdentityError> {
        self.event(account, kind, client, session, detail).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(4, 5), None);
        assert_eq!(backoff(5, 5), Some(Duration::from_secs(30)));
        assert_eq!(backoff(6, 5), Some(Duration::from_secs(60)));
        assert_eq!(backoff(40, 5), Some(Duration::from_secs(3600)));
    }
}
