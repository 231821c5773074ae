//! Account security: step-up marks on sessions, TOTP factors, recovery codes, password changes
//! and the security audit log.

use mica_core::{AccountId, SessionId, Timestamp};
use sqlx::Row;

use crate::{Result, Store};

/// An account's TOTP factor, secret still sealed.
#[derive(Debug, Clone)]
pub struct TotpRow {
    pub secret_enc: Vec<u8>,
    pub created_at: Timestamp,
    pub confirmed_at: Option<Timestamp>,
    pub last_used_step: i64,
}

/// One security-relevant event on an account, as its owner sees it.
#[derive(Debug, Clone)]
pub struct SecurityEventRow {
    pub at: Timestamp,
    pub kind: String,
    pub ip: String,
    pub user_agent: String,
    pub session_id: Option<SessionId>,
    pub detail: Option<String>,
}

impl Store {
    /// Until when a session's last step-up is valid (0 when never), if the session is live.
    pub async fn session_step_up(
        &self,
        account: AccountId,
        session: &SessionId,
    ) -> Result<Option<Timestamp>> {
        let row = sqlx::query(
            "SELECT stepped_up_until FROM sessions WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL",
        )
        .bind(session.0.clone())
        .bind(account.as_i64())
        .fetch_optional(&self.writer)
        .await?;
        row.map(|r| {
            r.try_get::<i64, _>("stepped_up_until")
                .map(Timestamp)
                .map_err(Into::into)
        })
        .transpose()
    }

    /// Marks a session as freshly verified until `until`; `false` when it is gone.
    pub async fn set_step_up(
        &self,
        account: AccountId,
        session: &SessionId,
        until: Timestamp,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE sessions SET stepped_up_until = $3 WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL",
        )
        .bind(session.0.clone())
        .bind(account.as_i64())
        .bind(until.millis())
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Consumes a one-time code; `false` when it was already used.
    pub async fn consume_code(&self, id: &str, now: Timestamp) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE verification_codes SET consumed_at = $2 WHERE id = $1 AND consumed_at IS NULL",
        )
        .bind(id)
        .bind(now.millis())
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Replaces the password and signs out every other session (their ids are returned).
    pub async fn change_password(
        &self,
        account: AccountId,
        hash: &str,
        now: Timestamp,
        keep: &SessionId,
    ) -> Result<Vec<SessionId>> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE accounts SET password_hash = $2, password_changed_at = $3, failed_logins = 0, locked_until = 0 \
             WHERE id = $1",
        )
        .bind(account.as_i64())
        .bind(hash)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        let ids = sqlx::query(
            "UPDATE sessions SET revoked_at = $3 WHERE account_id = $1 AND id <> $2 AND revoked_at IS NULL RETURNING id",
        )
        .bind(account.as_i64())
        .bind(keep.0.clone())
        .bind(now.millis())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id").map(SessionId))
        .collect::<Result<Vec<_>, _>>()?;
        crate::app_passwords::revoke_all_app_passwords_in(&mut tx, account).await?;
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn totp_factor(&self, account: AccountId) -> Result<Option<TotpRow>> {
        let row = sqlx::query(
            "SELECT secret_enc, created_at, confirmed_at, last_used_step FROM totp_factors WHERE account_id = $1",
        )
        .bind(account.as_i64())
        .fetch_optional(&self.writer)
        .await?;
        row.map(|r| {
            Ok(TotpRow {
                secret_enc: r.try_get("secret_enc")?,
                created_at: Timestamp(r.try_get("created_at")?),
                confirmed_at: r.try_get::<Option<i64>, _>("confirmed_at")?.map(Timestamp),
                last_used_step: r.try_get("last_used_step")?,
            })
        })
        .transpose()
    }

    /// Stores a new, unconfirmed TOTP secret. `false` when a confirmed factor already exists
    /// (it must be removed first).
    pub async fn put_pending_totp(
        &self,
        account: AccountId,
        secret_enc: &[u8],
        now: Timestamp,
    ) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO totp_factors (account_id, secret_enc, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO UPDATE SET secret_enc = excluded.secret_enc, \
             created_at = excluded.created_at, last_used_step = 0 WHERE totp_factors.confirmed_at IS NULL",
        )
        .bind(account.as_i64())
        .bind(secret_enc.to_vec())
        .bind(now.millis())
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Confirms the pending TOTP factor (its first code was `step`) and installs fresh recovery
    /// codes, atomically. `false` when there was no pending factor.
    pub async fn confirm_totp(
        &self,
        account: AccountId,
        step: i64,
        recovery_hashes: &[Vec<u8>],
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        // The account's row first, as replacing the recovery codes below takes it.
        crate::accounts::lock_account_row(&mut tx, account).await?;
        let n = sqlx::query(
            "UPDATE totp_factors SET confirmed_at = $2, last_used_step = $3 WHERE account_id = $1 AND confirmed_at IS NULL",
        )
        .bind(account.as_i64())
        .bind(now.millis())
        .bind(step)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        replace_recovery_codes_in(&mut tx, account, recovery_hashes, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records that TOTP step `step` was used; `false` when it (or a later one) already was, so a
    /// code is accepted once.
    pub async fn use_totp_step(&self, account: AccountId, step: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE totp_factors SET last_used_step = $2 WHERE account_id = $1 AND confirmed_at IS NOT NULL \
             AND last_used_step < $2",
        )
        .bind(account.as_i64())
        .bind(step)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Removes TOTP and the recovery codes that came with it. `false` when there was none.
    pub async fn delete_totp(&self, account: AccountId) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let n = sqlx::query("DELETE FROM totp_factors WHERE account_id = $1")
            .bind(account.as_i64())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM recovery_codes WHERE account_id = $1")
            .bind(account.as_i64())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    pub async fn replace_recovery_codes(
        &self,
        account: AccountId,
        hashes: &[Vec<u8>],
        now: Timestamp,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        replace_recovery_codes_in(&mut tx, account, hashes, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses a recovery code; `false` when unknown or already used.
    pub async fn use_recovery_code(
        &self,
        account: AccountId,
        hash: &[u8],
        now: Timestamp,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 WHERE account_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(account.as_i64())
        .bind(hash.to_vec())
        .bind(now.millis())
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn recovery_codes_left(&self, account: AccountId) -> Result<i64> {
        let r = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM recovery_codes WHERE account_id = $1 AND used_at IS NULL",
        )
        .bind(account.as_i64())
        .fetch_one(&self.writer)
        .await?;
        Ok(r.try_get("n")?)
    }

    pub async fn record_security_event(
        &self,
        account: AccountId,
        e: &SecurityEventRow,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO security_events (account_id, at, kind, ip, user_agent, session_id, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(account.as_i64())
        .bind(e.at.millis())
        .bind(e.kind.clone())
        .bind(e.ip.clone())
        .bind(e.user_agent.clone())
        .bind(e.session_id.as_ref().map(|s| s.0.clone()))
        .bind(e.detail.clone())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// An account's security events, newest first.
    pub async fn security_events(
        &self,
        account: AccountId,
        limit: i64,
    ) -> Result<Vec<SecurityEventRow>> {
        sqlx::query(
            "SELECT at, kind, ip, user_agent, session_id, detail FROM security_events WHERE account_id = $1 \
             ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(account.as_i64())
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(SecurityEventRow {
                at: Timestamp(r.try_get("at")?),
                kind: r.try_get("kind")?,
                ip: r.try_get("ip")?,
                user_agent: r.try_get("user_agent")?,
                session_id: r.try_get::<Option<String>, _>("session_id")?.map(SessionId),
                detail: r.try_get("detail")?,
            })
        })
        .collect()
    }
}

async fn replace_recovery_codes_in(
    conn: &mut sqlx::AnyConnection,
    account: AccountId,
    hashes: &[Vec<u8>],
    now: Timestamp,
) -> Result<()> {
    crate::accounts::lock_account_row(&mut *conn, account).await?;
    sqlx::query("DELETE FROM recovery_codes WHERE account_id = $1")
        .bind(account.as_i64())
        .execute(&mut *conn)
        .await?;
    for h in hashes {
        sqlx::query(
            "INSERT INTO recovery_codes (account_id, code_hash, created_at) VALUES ($1, $2, $3)",
        )
        .bind(account.as_i64())
        .bind(h.clone())
        .bind(now.millis())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
