//! The operator's log (OP-4): what operators did, each row written in the transaction of the
//! change it records, so a change is never made without its record nor recorded without being
//! made. It outlives the accounts it names (it is not in `ACCOUNT_DATA`).

use mica_core::{AccountId, Timestamp};
use sqlx::{Any, Row, Transaction};

use crate::{Result, Store};

/// An operator's action, to record.
#[derive(Debug, Clone, Copy)]
pub struct OperatorEntry<'a> {
    /// Who decided.
    pub operator: &'a str,
    /// `account_suspended`, `account_reinstated`, `account_deleted`, `quota_set`,
    /// `credits_adjusted`, `recovery_approved`, `recovery_denied`.
    pub action: &'a str,
    pub account: Option<AccountId>,
    /// What else it was about (a recovery request's id).
    pub subject: Option<&'a str>,
    /// The operator's reason or note, or the new value.
    pub detail: &'a str,
}

impl<'a> OperatorEntry<'a> {
    /// An action on an account, with the operator's reason or the new value.
    pub fn on_account(
        operator: &'a str,
        action: &'a str,
        account: AccountId,
        detail: &'a str,
    ) -> Self {
        OperatorEntry {
            operator,
            action,
            account: Some(account),
            subject: None,
            detail,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OperatorLogRow {
    pub id: String,
    pub at: Timestamp,
    pub operator: String,
    pub action: String,
    pub account: Option<AccountId>,
    pub subject: Option<String>,
    pub detail: String,
}

pub(crate) async fn record(
    tx: &mut Transaction<'static, Any>,
    e: &OperatorEntry<'_>,
    at: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO operator_log (id, at, operator, action, account_id, subject, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(format!("op_{}", mica_core::crypto::random_token_string(12)))
    .bind(at.millis())
    .bind(e.operator)
    .bind(e.action)
    .bind(e.account.map(AccountId::as_i64))
    .bind(e.subject)
    .bind(e.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// The newest `limit` entries, of one account or of all.
    pub async fn operator_log(
        &self,
        account: Option<AccountId>,
        limit: i64,
    ) -> Result<Vec<OperatorLogRow>> {
        // One statement for both: `$1` is the account, or NULL for every account.
        sqlx::query(
            "SELECT id, at, operator, action, account_id, subject, detail FROM operator_log \
             WHERE ($1 IS NULL OR account_id = $1) ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(account.map(AccountId::as_i64))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(OperatorLogRow {
                id: r.try_get("id")?,
                at: Timestamp(r.try_get("at")?),
                operator: r.try_get("operator")?,
                action: r.try_get("action")?,
                account: r
                    .try_get::<Option<i64>, _>("account_id")?
                    .and_then(AccountId::from_i64),
                subject: r.try_get("subject")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect()
    }

    /// Sets an account's storage quota (`None`: the server's default) and records who did.
    pub async fn set_quota(
        &self,
        account: AccountId,
        quota: Option<i64>,
        entry: &OperatorEntry<'_>,
        now: Timestamp,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        crate::cloud::lock_account(&mut tx, account, 0).await?;
        sqlx::query("UPDATE cloud_accounts SET quota_bytes = $2 WHERE account_id = $1")
            .bind(account.as_i64())
            .bind(quota)
            .execute(&mut *tx)
            .await?;
        record(&mut tx, entry, now).await?;
        tx.commit().await?;
        Ok(())
    }
}
