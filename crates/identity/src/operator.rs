//! What the operator does to an account (OP-4, through `mica admin account`): look it up,
//! suspend or reinstate it, or delete it for good. A suspension is a decision about an account, never a deletion: its
//! data, devices and activation locks stay; its sessions end at once and nobody can sign in
//! (nor use an app password) until it is reinstated. Each decision names its operator and goes
//! into the account's security log, and the owner is told at every address.

use mica_core::{AccountId, Login, Timestamp};

use crate::{ClientInfo, Identity, IdentityError};

/// What an operator sees of an account (addresses masked).
#[derive(Debug, Clone)]
pub struct AccountSummary {
    pub id: AccountId,
    /// `active`, `suspended`, or `deleting`.
    pub status: String,
    pub created_at: Timestamp,
    /// The account's addresses and recovery addresses, masked.
    pub addresses: Vec<String>,
    pub two_step: bool,
    pub sessions: usize,
    pub last_sign_in: Option<Timestamp>,
    /// Signing in is held back until then (too many wrong passwords).
    pub locked_until: Option<Timestamp>,
    /// Bytes stored, and the account's own quota (`None`: the server's default).
    pub storage_used: i64,
    pub storage_quota: Option<i64>,
}

/// How an operator's decisions appear in the security log and to the notifier.
fn operator_client(operator: &str) -> ClientInfo {
    ClientInfo {
        ip: "operator".into(),
        user_agent: format!("mica admin ({operator})"),
        ..ClientInfo::default()
    }
}

/// `text` trimmed, when it holds 1 to `max` characters; else `field`'s error, saying `what`.
fn required<'a>(
    field: &'static str,
    text: &'a str,
    max: usize,
    what: &str,
) -> Result<&'a str, IdentityError> {
    let text = text.trim();
    // One line: the operator's log prints one entry per line, and nobody may forge another.
    if text.is_empty() || text.chars().count() > max || text.chars().any(char::is_control) {
        return Err(IdentityError::Invalid {
            field,
            message: format!("{what} (1 to {max} characters, on one line)"),
        });
    }
    Ok(text)
}

/// The largest quota an operator sets (2⁵³ bytes, 9 PB): the storage notices compute a
/// percentage of it in SQL, which must stay within a 64-bit integer on PostgreSQL.
const MAX_QUOTA: i64 = 1 << 53;

fn check_reason(reason: &str) -> Result<&str, IdentityError> {
    required("reason", reason, 1000, "say why; the owner is told")
}

fn check_operator(operator: &str) -> Result<&str, IdentityError> {
    required("operator", operator, 100, "say who decides")
}

fn already_deleting() -> IdentityError {
    IdentityError::Invalid {
        field: "account",
        message: "this account is already being deleted".into(),
    }
}

impl Identity {
    /// The account behind an account number, email or phone number (its recovery addresses
    /// included), as the operator sees it.
    pub async fn operator_account(&self, login: &str) -> Result<AccountSummary, IdentityError> {
        let login = Login::parse(login)?;
        let row = self
            .account_for_login(&login)
            .await?
            .ok_or_else(|| IdentityError::Invalid {
                field: "login",
                message: "no account has this number, email or phone number".into(),
            })?;
        let account = row.id;
        let now = self.now();
        let storage = self.store().cloud_account(account).await?;
        let last_sign_in = self
            .store()
            .login_events(account, 200)
            .await?
            .iter()
            .find(|e| e.outcome == "success")
            .map(|e| e.at);
        Ok(AccountSummary {
            id: account,
            status: row.status.clone(),
            created_at: row.created_at,
            addresses: self
                .known_addresses(account)
                .await
                .iter()
                .map(|t| t.masked())
                .collect(),
            two_step: self
                .store()
                .totp_factor(account)
                .await?
                .is_some_and(|f| f.confirmed_at.is_some()),
            sessions: self.store().active_sessions(account, now).await?.len(),
            last_sign_in,
            locked_until: Some(row.locked_until).filter(|t| *t > now),
            storage_used: storage.used_bytes,
            storage_quota: storage.quota_bytes,
        })
    }

    /// Suspends an active account: every session ends now, signing in answers
    /// `account_suspended` (to the right password only), app passwords stop working. Devices
    /// stay linked and locked to it.
    pub async fn suspend_account(
        &self,
        login: &str,
        operator: &str,
        reason: &str,
    ) -> Result<AccountSummary, IdentityError> {
        let operator = check_operator(operator)?;
        let reason = check_reason(reason)?;
        let account = self.operator_account(login).await?.id;
        let entry =
            mica_store::OperatorEntry::on_account(operator, "account_suspended", account, reason);
        let revoked = self
            .store()
            .suspend_account(account, self.now(), &entry)
            .await?
            .ok_or_else(|| IdentityError::Invalid {
                field: "account",
                message: "only an active account can be suspended".into(),
            })?;
        self.note_revoked(revoked);
        self.account_changed(account);
        self.decided(account, "account_suspended", operator, reason)
            .await?;
        let name = &self.inner.cfg.service_name;
        self.tell_everywhere(
            account,
            &format!("{name}: your account was suspended"),
            &format!(
                "The operator of {name} suspended your account {account}: {reason}. You are \
                 signed out everywhere and cannot sign in until it is reinstated; your data and \
                 devices are kept. Reply to the operator if you think this is a mistake."
            ),
        )
        .await;
        self.operator_account(&account.to_string()).await
    }

    /// Makes a suspended account active again (its owner signs in anew).
    pub async fn reinstate_account(
        &self,
        login: &str,
        operator: &str,
    ) -> Result<AccountSummary, IdentityError> {
        let operator = check_operator(operator)?;
        let account = self.operator_account(login).await?.id;
        let entry =
            mica_store::OperatorEntry::on_account(operator, "account_reinstated", account, "");
        if !self
            .store()
            .reinstate_account(account, self.now(), &entry)
            .await?
        {
            return Err(IdentityError::Invalid {
                field: "account",
                message: "this account is not suspended".into(),
            });
        }
        self.account_changed(account);
        self.decided(account, "account_reinstated", operator, "")
            .await?;
        let name = &self.inner.cfg.service_name;
        self.tell_everywhere(
            account,
            &format!("{name}: your account was reinstated"),
            &format!("Your {name} account {account} is active again: you can sign in."),
        )
        .await;
        self.operator_account(&account.to_string()).await
    }

    /// Deletes an account for good (an erasure request, or an account closed for abuse): the
    /// owner is told why at every address first, then it is marked as being deleted — every
    /// session ends, its devices' activation locks are released — and the deletion job removes
    /// all its data (run by the server's job runner). The decision goes to the log, not to the
    /// account's security log, which goes with it.
    pub async fn delete_account_by_operator(
        &self,
        login: &str,
        operator: &str,
        reason: &str,
    ) -> Result<AccountSummary, IdentityError> {
        let operator = check_operator(operator)?;
        let reason = check_reason(reason)?;
        let summary = self.operator_account(login).await?;
        let account = summary.id;
        if summary.status == "deleting" {
            return Err(already_deleting());
        }
        // Told while its addresses are still known.
        let name = &self.inner.cfg.service_name;
        self.tell_everywhere(
            account,
            &format!("{name}: your account is being deleted"),
            &format!(
                "The operator of {name} is deleting your account {account} and all its data: \
                 {reason}. This cannot be undone."
            ),
        )
        .await;
        let entry =
            mica_store::OperatorEntry::on_account(operator, "account_deleted", account, reason);
        let revoked = self
            .store()
            .schedule_account_deletion(account, self.now(), Some(&entry))
            .await?
            .ok_or_else(already_deleting)?;
        self.note_revoked(revoked);
        self.account_changed(account);
        tracing::warn!(%account, %operator, "account deletion scheduled by the operator");
        self.inner.jobs.notify_one();
        Ok(AccountSummary {
            status: "deleting".into(),
            sessions: 0,
            ..summary
        })
    }

    /// Sets the account's storage quota in bytes (`None`: back to the server's default). A
    /// quota below what the account stores refuses new writes until it frees space; nothing
    /// stored is removed.
    pub async fn set_quota(
        &self,
        login: &str,
        quota: Option<i64>,
        operator: &str,
    ) -> Result<AccountSummary, IdentityError> {
        let operator = check_operator(operator)?;
        if quota.is_some_and(|q| !(0..=MAX_QUOTA).contains(&q)) {
            return Err(IdentityError::Invalid {
                field: "bytes",
                message: format!("a quota is 0 bytes or more, up to {MAX_QUOTA}"),
            });
        }
        let summary = self.operator_account(login).await?;
        if summary.status == "deleting" {
            return Err(already_deleting());
        }
        let detail = quota.map_or_else(|| "default".to_owned(), |q| q.to_string());
        let entry =
            mica_store::OperatorEntry::on_account(operator, "quota_set", summary.id, &detail);
        self.store()
            .set_quota(summary.id, quota, &entry, self.now())
            .await?;
        self.operator_account(&summary.id.to_string()).await
    }

    /// The operator's log, newest first: of one account (its number, even once deleted, or an
    /// address it has) or of all.
    pub async fn operator_log(
        &self,
        login: Option<&str>,
        limit: i64,
    ) -> Result<Vec<mica_store::OperatorLogRow>, IdentityError> {
        let account = match login {
            None => None,
            Some(l) => Some(match l.trim().parse::<AccountId>() {
                Ok(a) => a,
                Err(_) => self.operator_account(l).await?.id,
            }),
        };
        Ok(self
            .store()
            .operator_log(account, limit.clamp(1, 10_000))
            .await?)
    }

    /// Records an operator's decision in the account's security log.
    async fn decided(
        &self,
        account: AccountId,
        kind: &str,
        operator: &str,
        reason: &str,
    ) -> Result<(), IdentityError> {
        let detail = if reason.is_empty() {
            format!("by {operator}")
        } else {
            format!("by {operator}: {reason}")
        };
        self.event(
            account,
            kind,
            &operator_client(operator),
            None,
            Some(detail),
        )
        .await
    }
}
