//! Account recovery requests (ID-18): made without signing in when every factor is lost; they
//! wait, can be cancelled by the owner, and are decided by an operator. States:
//! `unverified` → `waiting` → `in_review` → `approved` → `completed`, or `cancelled`, `denied`,
//! `expired`. Every change of state is a conditional update on the state it leaves, so two
//! actors (the owner cancelling, an operator approving) cannot both win.

use mica_core::{AccountId, SessionId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store};

/// States in which a request is still alive: the owner can cancel it, and it holds back
/// nothing else.
pub const RECOVERY_OPEN: &[&str] = &["waiting", "in_review", "approved"];

#[derive(Debug, Clone)]
pub struct RecoveryRequestRow {
    pub id: String,
    pub account_id: Option<AccountId>,
    pub contact_kind: String,
    pub contact_enc: Vec<u8>,
    pub contact_bidx: Vec<u8>,
    pub statement_enc: Vec<u8>,
    pub answers_given: i64,
    pub answers_right: i64,
    pub known_ip: bool,
    pub ip: String,
    pub user_agent: String,
    pub state: String,
    pub cancel_hash: Option<Vec<u8>>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub wait_until: Option<Timestamp>,
    pub decided_at: Option<Timestamp>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewRecoveryRequest {
    pub id: String,
    pub account_id: Option<AccountId>,
    pub contact_kind: &'static str,
    pub contact_enc: Vec<u8>,
    pub contact_bidx: Vec<u8>,
    pub statement_enc: Vec<u8>,
    pub answers_given: i64,
    pub answers_right: i64,
    pub known_ip: bool,
    pub ip: String,
    pub user_agent: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// What a completed recovery changes, in one transaction.
#[derive(Debug, Clone)]
pub struct RecoveryCompletion<'a> {
    pub request_id: &'a str,
    pub code_id: &'a str,
    pub account: AccountId,
    pub password_hash: &'a str,
    /// The proven contact becomes the account's email (`email`) or phone (`phone`).
    pub contact_kind: &'a str,
    pub contact_enc: &'a [u8],
    pub contact_bidx: &'a [u8],
    pub now: Timestamp,
}

/// How a completion ended.
#[derive(Debug)]
pub enum RecoveryCompleted {
    Done {
        revoked: Vec<SessionId>,
    },
    /// The code or the approval was used or changed meanwhile.
    Stale,
    /// Another account holds the contact as its own email or phone.
    ContactTaken,
}

const COLUMNS: &str = "id, account_id, contact_kind, contact_enc, contact_bidx, statement_enc, \
     answers_given, answers_right, known_ip, ip, user_agent, state, cancel_hash, created_at, \
     expires_at, wait_until, decided_at, decided_by, reason";

fn from_row(r: &AnyRow) -> Result<RecoveryRequestRow> {
    Ok(RecoveryRequestRow {
        id: r.try_get("id")?,
        account_id: r
            .try_get::<Option<i64>, _>("account_id")?
            .and_then(AccountId::from_i64),
        contact_kind: r.try_get("contact_kind")?,
        contact_enc: r.try_get("contact_enc")?,
        contact_bidx: r.try_get("contact_bidx")?,
        statement_enc: r.try_get("statement_enc")?,
        answers_given: r.try_get("answers_given")?,
        answers_right: r.try_get("answers_right")?,
        known_ip: r.try_get::<i64, _>("known_ip")? != 0,
        ip: r.try_get("ip")?,
        user_agent: r.try_get("user_agent")?,
        state: r.try_get("state")?,
        cancel_hash: r.try_get("cancel_hash")?,
        created_at: Timestamp(r.try_get("created_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        wait_until: r.try_get::<Option<i64>, _>("wait_until")?.map(Timestamp),
        decided_at: r.try_get::<Option<i64>, _>("decided_at")?.map(Timestamp),
        decided_by: r.try_get("decided_by")?,
        reason: r.try_get("reason")?,
    })
}

fn in_list(states: &[&str], first: usize) -> String {
    (0..states.len())
        .map(|i| format!("${}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    pub async fn insert_recovery_request(&self, r: &NewRecoveryRequest) -> Result<()> {
        sqlx::query(
            "INSERT INTO recovery_requests (id, account_id, contact_kind, contact_enc, contact_bidx, \
             statement_enc, answers_given, answers_right, known_ip, ip, user_agent, state, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'unverified', $12, $13)",
        )
        .bind(r.id.clone())
        .bind(r.account_id.map(AccountId::as_i64))
        .bind(r.contact_kind)
        .bind(r.contact_enc.clone())
        .bind(r.contact_bidx.clone())
        .bind(r.statement_enc.clone())
        .bind(r.answers_given)
        .bind(r.answers_right)
        .bind(i64::from(r.known_ip))
        .bind(r.ip.clone())
        .bind(r.user_agent.clone())
        .bind(r.created_at.millis())
        .bind(r.expires_at.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn recovery_request(&self, id: &str) -> Result<Option<RecoveryRequestRow>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM recovery_requests WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
    }

    /// Requests in any of `states`, oldest first (for one account, or for all).
    pub async fn recovery_requests(
        &self,
        account: Option<AccountId>,
        states: &[&str],
    ) -> Result<Vec<RecoveryRequestRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM recovery_requests WHERE ($1 IS NULL OR account_id = $1) \
             AND state IN ({}) ORDER BY created_at, id LIMIT 1000",
            in_list(states, 2)
        );
        let mut q = sqlx::query(&sql).bind(account.map(AccountId::as_i64));
        for s in states {
            q = q.bind(*s);
        }
        q.fetch_all(&self.reader)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// The contact was proven with the code `code_id`: the request starts waiting. False when
    /// the code or the request was used meanwhile.
    pub async fn start_recovery_wait(
        &self,
        id: &str,
        code_id: &str,
        cancel_hash: &[u8],
        now: Timestamp,
        wait_until: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let consumed = sqlx::query(
            "UPDATE verification_codes SET consumed_at = $2 WHERE id = $1 AND consumed_at IS NULL",
        )
        .bind(code_id)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let started = sqlx::query(
            "UPDATE recovery_requests SET state = 'waiting', cancel_hash = $2, wait_until = $3 \
             WHERE id = $1 AND state = 'unverified'",
        )
        .bind(id)
        .bind(cancel_hash.to_vec())
        .bind(wait_until.millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if consumed != 1 || started != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Moves a request from one of `from` to `to`, recording who decided and why; false when
    /// it was no longer in any of `from`.
    pub async fn set_recovery_state(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        now: Timestamp,
        by: Option<&str>,
        reason: Option<&str>,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE recovery_requests SET state = $2, decided_at = $3, decided_by = $4, reason = $5 \
             WHERE id = $1 AND state IN ({})",
            in_list(from, 6)
        );
        let mut q = sqlx::query(&sql)
            .bind(id)
            .bind(to)
            .bind(now.millis())
            .bind(by.map(str::to_owned))
            .bind(reason.map(str::to_owned));
        for s in from {
            q = q.bind(*s);
        }
        Ok(q.execute(&self.writer).await?.rows_affected() == 1)
    }

    /// Waiting requests whose waiting period is over go to review; returns them.
    pub async fn recovery_requests_due(&self, now: Timestamp) -> Result<Vec<RecoveryRequestRow>> {
        let due = sqlx::query(&format!(
            "UPDATE recovery_requests SET state = 'in_review' \
             WHERE state = 'waiting' AND wait_until <= $1 RETURNING {COLUMNS}"
        ))
        .bind(now.millis())
        .fetch_all(&self.writer)
        .await?;
        due.iter().map(from_row).collect()
    }

    /// Forgets requests whose contact was never proven, once their code has expired.
    pub async fn purge_recovery_requests(&self, before: Timestamp) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM recovery_requests WHERE state = 'unverified' AND expires_at < $1",
        )
        .bind(before.millis())
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// Carries out an approved recovery: the code is consumed, the request completed, the
    /// password set, every session and app password revoked, two-step (authenticator,
    /// recovery codes, passkeys) turned off, the proven contact made the account's own, and
    /// the account's other open requests closed — all or nothing.
    pub async fn complete_recovery(&self, c: &RecoveryCompletion<'_>) -> Result<RecoveryCompleted> {
        let mut tx = self.writer.begin().await?;
        let consumed = sqlx::query(
            "UPDATE verification_codes SET consumed_at = $2 WHERE id = $1 AND consumed_at IS NULL",
        )
        .bind(c.code_id)
        .bind(c.now.millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let completed = sqlx::query(
            "UPDATE recovery_requests SET state = 'completed' \
             WHERE id = $1 AND account_id = $2 AND state = 'approved'",
        )
        .bind(c.request_id)
        .bind(c.account.as_i64())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if consumed != 1 || completed != 1 {
            tx.rollback().await?;
            return Ok(RecoveryCompleted::Stale);
        }
        let (enc_col, bidx_col) = match c.contact_kind {
            "email" => ("email_enc", "email_bidx"),
            _ => ("phone_enc", "phone_bidx"),
        };
        let taken = sqlx::query(&format!(
            "SELECT id FROM accounts WHERE {bidx_col} = $1 AND id <> $2"
        ))
        .bind(c.contact_bidx.to_vec())
        .bind(c.account.as_i64())
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_some() {
            tx.rollback().await?;
            return Ok(RecoveryCompleted::ContactTaken);
        }
        sqlx::query(&format!(
            "UPDATE accounts SET password_hash = $2, password_changed_at = $3, failed_logins = 0, \
             locked_until = 0, {enc_col} = $4, {bidx_col} = $5 WHERE id = $1"
        ))
        .bind(c.account.as_i64())
        .bind(c.password_hash)
        .bind(c.now.millis())
        .bind(c.contact_enc.to_vec())
        .bind(c.contact_bidx.to_vec())
        .execute(&mut *tx)
        .await?;
        let revoked = crate::sessions::revoke_all_in(&mut tx, c.account, c.now).await?;
        crate::app_passwords::revoke_all_app_passwords_in(&mut tx, c.account).await?;
        for table in ["totp_factors", "recovery_codes", "passkeys"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE account_id = $1"))
                .bind(c.account.as_i64())
                .execute(&mut *tx)
                .await?;
        }
        // The proven contact is the account's own now; a recovery factor holding the same
        // address would only repeat it.
        sqlx::query("DELETE FROM recovery_factors WHERE account_id = $1 AND value_bidx = $2")
            .bind(c.account.as_i64())
            .bind(c.contact_bidx.to_vec())
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "UPDATE recovery_requests SET state = 'cancelled', decided_at = $2, \
             reason = 'another request recovered the account' \
             WHERE account_id = $1 AND state IN ({})",
            in_list(RECOVERY_OPEN, 3)
        ))
        .bind(c.account.as_i64())
        .bind(c.now.millis())
        .bind(RECOVERY_OPEN[0])
        .bind(RECOVERY_OPEN[1])
        .bind(RECOVERY_OPEN[2])
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RecoveryCompleted::Done { revoked })
    }

    /// Whether the account has signed in from `ip` (evidence for an operator, never proof).
    pub async fn signed_in_from(&self, account: AccountId, ip: &str) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 AS x FROM login_events WHERE account_id = $1 AND ip = $2 AND outcome = 'success' LIMIT 1",
        )
        .bind(account.as_i64())
        .bind(ip)
        .fetch_optional(&self.reader)
        .await?
        .is_some())
    }
}
