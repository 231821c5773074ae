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
/// States a request ends in.
pub const RECOVERY_CLOSED: &[&str] = &["completed", "cancelled", "denied", "expired"];
/// Every state of a filed request (its contact proven): open, then closed.
pub const RECOVERY_FILED: &[&str] = &[
    "waiting",
    "in_review",
    "approved",
    "completed",
    "cancelled",
    "denied",
    "expired",
];
/// Every state, a request not filed yet included.
pub const RECOVERY_ANY: &[&str] = &[
    "unverified",
    "waiting",
    "in_review",
    "approved",
    "completed",
    "cancelled",
    "denied",
    "expired",
];

#[derive(Debug, Clone)]
pub struct RecoveryRequestRow {
    pub id: String,
    pub account_id: Option<AccountId>,
    pub login_bidx: Vec<u8>,
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
    /// The operator's note, never shown to the requester.
    pub note: Option<String>,
    /// Why it was denied, cancelled or expired.
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewRecoveryRequest {
    pub id: String,
    pub account_id: Option<AccountId>,
    pub login_bidx: Vec<u8>,
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

/// A request's move to another state.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryStateChange<'a> {
    pub to: &'a str,
    pub at: Timestamp,
    /// Who decided (an operator's name, `owner`).
    pub by: Option<&'a str>,
    /// An operator's note, not for the requester.
    pub note: Option<&'a str>,
    /// Why it ended, for the requester.
    pub reason: Option<&'a str>,
    /// The operator's log entry, when an operator decided (written in the same transaction).
    pub logged: Option<crate::OperatorEntry<'a>>,
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
    /// The approval must be at least this recent.
    pub approved_since: Timestamp,
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

const COLUMNS: &str =
    "id, account_id, login_bidx, contact_kind, contact_enc, contact_bidx, statement_enc, \
     answers_given, answers_right, known_ip, ip, user_agent, state, cancel_hash, created_at, \
     expires_at, wait_until, decided_at, decided_by, note, reason";

fn from_row(r: &AnyRow) -> Result<RecoveryRequestRow> {
    Ok(RecoveryRequestRow {
        id: r.try_get("id")?,
        account_id: r
            .try_get::<Option<i64>, _>("account_id")?
            .and_then(AccountId::from_i64),
        login_bidx: r.try_get("login_bidx")?,
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
        note: r.try_get("note")?,
        reason: r.try_get("reason")?,
    })
}

pub(crate) fn in_list(states: &[&str], first: usize) -> String {
    (0..states.len())
        .map(|i| format!("${}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    pub async fn insert_recovery_request(&self, r: &NewRecoveryRequest) -> Result<()> {
        sqlx::query(
            "INSERT INTO recovery_requests (id, account_id, login_bidx, contact_kind, contact_enc, \
             contact_bidx, statement_enc, answers_given, answers_right, known_ip, ip, user_agent, state, \
             created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'unverified', $13, $14)",
        )
        .bind(r.id.clone())
        .bind(r.account_id.map(AccountId::as_i64))
        .bind(r.login_bidx.clone())
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

    /// Moves a request from one of `from` to `to`; false when it was no longer in any of
    /// `from`. The first decision is kept (who, when: an approval's time bounds its use), a
    /// later one (a cancellation after approval) adds its `reason`.
    pub async fn set_recovery_state(
        &self,
        id: &str,
        from: &[&str],
        change: &RecoveryStateChange<'_>,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE recovery_requests SET state = $2, decided_at = COALESCE(decided_at, $3), \
             decided_by = COALESCE(decided_by, $4), note = COALESCE($5, note), \
             reason = COALESCE($6, reason) WHERE id = $1 AND state IN ({})",
            in_list(from, 7)
        );
        let mut q = sqlx::query(&sql)
            .bind(id)
            .bind(change.to)
            .bind(change.at.millis())
            .bind(change.by.map(str::to_owned))
            .bind(change.note.map(str::to_owned))
            .bind(change.reason.map(str::to_owned));
        for s in from {
            q = q.bind(*s);
        }
        let mut tx = self.writer.begin().await?;
        if q.execute(&mut *tx).await?.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(e) = &change.logged {
            crate::operator_log::record(&mut tx, e, change.at).await?;
        }
        tx.commit().await?;
        Ok(true)
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

    /// Approvals older than `before` that were never used expire.
    pub async fn expire_recovery_approvals(&self, before: Timestamp) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE recovery_requests SET state = 'expired', reason = 'it was not finished in time' \
             WHERE state = 'approved' AND decided_at < $1",
        )
        .bind(before.millis())
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// Forgets requests whose contact was never proven, once their code has expired
    /// (`before`), and closed requests made before `closed_before`.
    pub async fn purge_recovery_requests(
        &self,
        before: Timestamp,
        closed_before: Timestamp,
    ) -> Result<u64> {
        let sql = format!(
            "DELETE FROM recovery_requests WHERE (state = 'unverified' AND expires_at < $1) \
             OR (state IN ({}) AND created_at < $2)",
            in_list(RECOVERY_CLOSED, 3)
        );
        let mut q = sqlx::query(&sql)
            .bind(before.millis())
            .bind(closed_before.millis());
        for s in RECOVERY_CLOSED {
            q = q.bind(*s);
        }
        Ok(q.execute(&self.writer).await?.rows_affected())
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
             WHERE id = $1 AND account_id = $2 AND state = 'approved' AND decided_at >= $3",
        )
        .bind(c.request_id)
        .bind(c.account.as_i64())
        .bind(c.approved_since.millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if consumed != 1 || completed != 1 {
            tx.rollback().await?;
            return Ok(RecoveryCompleted::Stale);
        }
        let (enc_col, bidx_col, other_enc, other_bidx) = match c.contact_kind {
            "email" => ("email_enc", "email_bidx", "phone_enc", "phone_bidx"),
            _ => ("phone_enc", "phone_bidx", "email_enc", "email_bidx"),
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
        // The lost email or phone goes too: whoever holds it now (a recycled number, a mailbox
        // taken over) must not reset the password again once two-step is off.
        let set = sqlx::query(&format!(
            "UPDATE accounts SET password_hash = $2, password_changed_at = $3, failed_logins = 0, \
             locked_until = 0, {enc_col} = $4, {bidx_col} = $5, {other_enc} = NULL, \
             {other_bidx} = NULL WHERE id = $1"
        ))
        .bind(c.account.as_i64())
        .bind(c.password_hash)
        .bind(c.now.millis())
        .bind(c.contact_enc.to_vec())
        .bind(c.contact_bidx.to_vec())
        .execute(&mut *tx)
        .await;
        match set.map_err(crate::StoreError::from) {
            Ok(_) => {}
            // Taken by a sign-up between the check and the write (PostgreSQL).
            Err(crate::StoreError::Conflict) => {
                tx.rollback().await?;
                return Ok(RecoveryCompleted::ContactTaken);
            }
            Err(e) => return Err(e),
        }
        let revoked = crate::sessions::revoke_all_in(&mut tx, c.account, c.now).await?;
        crate::app_passwords::revoke_all_app_passwords_in(&mut tx, c.account).await?;
        // Every factor was lost, or is in someone else's hands: two-step (authenticator,
        // recovery codes, passkeys) and the recovery addresses go, and so do codes still
        // pending (a reset code sent to the old address).
        for table in [
            "totp_factors",
            "recovery_codes",
            "passkeys",
            "recovery_factors",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE account_id = $1"))
                .bind(c.account.as_i64())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM verification_codes WHERE account_id = $1 AND consumed_at IS NULL")
            .bind(c.account.as_i64())
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

    /// Requests filed (their contact proven) for what was typed as `login_bidx` since `since`:
    /// their number and the oldest one's time.
    pub async fn recovery_filings(
        &self,
        login_bidx: &[u8],
        since: Timestamp,
    ) -> Result<(i64, Option<Timestamp>)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM recovery_requests \
             WHERE login_bidx = $1 AND created_at >= $2 AND state <> 'unverified'",
        )
        .bind(login_bidx.to_vec())
        .bind(since.millis())
        .fetch_one(&self.writer)
        .await?;
        Ok((
            row.try_get("n")?,
            row.try_get::<Option<i64>, _>("oldest")?.map(Timestamp),
        ))
    }

    /// Whether the account has signed in from `ip` (evidence for an operator, never proof).
    /// With no account, the same query finds nothing in the same time.
    pub async fn signed_in_from(&self, account: Option<AccountId>, ip: &str) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 AS x FROM login_events WHERE account_id = $1 AND ip = $2 AND outcome = 'success' LIMIT 1",
        )
        .bind(account.map_or(-1, AccountId::as_i64))
        .bind(ip)
        .fetch_optional(&self.reader)
        .await?
        .is_some())
    }
}
