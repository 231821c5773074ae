//! Accounts.

use mica_core::{AccountId, SessionId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// An account as stored: personal data still sealed.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: AccountId,
    pub email_enc: Option<Vec<u8>>,
    pub phone_enc: Option<Vec<u8>>,
    pub password_hash: String,
    pub password_changed_at: Timestamp,
    pub sessions_valid_after: Timestamp,
    pub failed_logins: i64,
    pub locked_until: Timestamp,
    pub status: String,
    pub created_at: Timestamp,
}

/// A new account, personal data already sealed and indexed by the caller.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: AccountId,
    pub email_enc: Option<Vec<u8>>,
    pub email_bidx: Option<Vec<u8>>,
    pub phone_enc: Option<Vec<u8>>,
    pub phone_bidx: Option<Vec<u8>>,
    pub password_hash: String,
    pub created_at: Timestamp,
}

macro_rules! select_account_where {
    ($key:literal) => {
        concat!(
            "SELECT id, email_enc, phone_enc, password_hash, password_changed_at, ",
            "sessions_valid_after, failed_logins, locked_until, status, created_at ",
            "FROM accounts WHERE ",
            $key,
            " = $1"
        )
    };
}

fn account_from_row(r: &AnyRow) -> Result<AccountRow> {
    let id: i64 = r.try_get("id")?;
    Ok(AccountRow {
        id: AccountId::from_i64(id)
            .ok_or_else(|| StoreError::Corrupt(format!("account id {id}")))?,
        email_enc: r.try_get("email_enc")?,
        phone_enc: r.try_get("phone_enc")?,
        password_hash: r.try_get("password_hash")?,
        password_changed_at: Timestamp(r.try_get("password_changed_at")?),
        sessions_valid_after: Timestamp(r.try_get("sessions_valid_after")?),
        failed_logins: r.try_get("failed_logins")?,
        locked_until: Timestamp(r.try_get("locked_until")?),
        status: r.try_get("status")?,
        created_at: Timestamp(r.try_get("created_at")?),
    })
}

/// Which identifier an account is looked up by.
#[derive(Debug, Clone, Copy)]
pub enum LookupBy<'a> {
    Id(AccountId),
    EmailIndex(&'a [u8]),
    PhoneIndex(&'a [u8]),
}

impl Store {
    /// Suspends an active account (an operator's decision) and revokes every session of it in
    /// the same transaction: the sessions revoked, or `None` when the account was not active.
    pub async fn suspend_account(
        &self,
        account: AccountId,
        now: Timestamp,
        entry: &crate::OperatorEntry<'_>,
    ) -> Result<Option<Vec<SessionId>>> {
        let mut tx = self.writer.begin().await?;
        let changed = sqlx::query(
            "UPDATE accounts SET status = 'suspended' WHERE id = $1 AND status = 'active'",
        )
        .bind(account.as_i64())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(None);
        }
        let ids = crate::sessions::revoke_all_in(&mut tx, account, now).await?;
        crate::operator_log::record(&mut tx, entry, now).await?;
        tx.commit().await?;
        Ok(Some(ids))
    }

    /// Makes a suspended account active again; whether it was suspended.
    pub async fn reinstate_account(
        &self,
        account: AccountId,
        now: Timestamp,
        entry: &crate::OperatorEntry<'_>,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let changed = sqlx::query(
            "UPDATE accounts SET status = 'active' WHERE id = $1 AND status = 'suspended'",
        )
        .bind(account.as_i64())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        crate::operator_log::record(&mut tx, entry, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn account(&self, by: LookupBy<'_>) -> Result<Option<AccountRow>> {
        let q = match by {
            LookupBy::Id(id) => sqlx::query(select_account_where!("id")).bind(id.as_i64()),
            LookupBy::EmailIndex(b) => {
                sqlx::query(select_account_where!("email_bidx")).bind(b.to_vec())
            }
            LookupBy::PhoneIndex(b) => {
                sqlx::query(select_account_where!("phone_bidx")).bind(b.to_vec())
            }
        };
        q.fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(account_from_row)
            .transpose()
    }

    /// Whether an email or phone index is already held by an account.
    pub async fn identifier_taken(
        &self,
        email_bidx: Option<&[u8]>,
        phone_bidx: Option<&[u8]>,
    ) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS x FROM accounts WHERE email_bidx = $1 OR phone_bidx = $2 LIMIT 1",
        )
        .bind(email_bidx.map(<[u8]>::to_vec))
        .bind(phone_bidx.map(<[u8]>::to_vec))
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.is_some())
    }

    /// Sets the account's email (`kind` = `email`) or phone (`phone`); `Err(Conflict)` when
    /// another account holds it.
    pub async fn set_identifier(
        &self,
        id: AccountId,
        kind: &str,
        enc: &[u8],
        bidx: &[u8],
    ) -> Result<()> {
        let sql = match kind {
            "email" => "UPDATE accounts SET email_enc = $2, email_bidx = $3 WHERE id = $1",
            _ => "UPDATE accounts SET phone_enc = $2, phone_bidx = $3 WHERE id = $1",
        };
        sqlx::query(sql)
            .bind(id.as_i64())
            .bind(enc.to_vec())
            .bind(bidx.to_vec())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Counts a failed password and returns the new count of consecutive failures.
    pub async fn record_login_failure(&self, id: AccountId) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE accounts SET failed_logins = failed_logins + 1 WHERE id = $1 RETURNING failed_logins",
        )
        .bind(id.as_i64())
        .fetch_optional(&self.writer)
        .await?;
        match row {
            Some(r) => Ok(r.try_get("failed_logins")?),
            None => Ok(0),
        }
    }

    pub async fn lock_account_until(&self, id: AccountId, until: Timestamp) -> Result<()> {
        sqlx::query("UPDATE accounts SET locked_until = $2 WHERE id = $1 AND locked_until < $2")
            .bind(id.as_i64())
            .bind(until.millis())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// One sealed personal value the database holds (`("email" | "phone", sealed)`), if any:
    /// enough to tell at start whether the master key is the one the data was written with.
    pub async fn sealed_sample(&self) -> Result<Option<(&'static str, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT email_enc, phone_enc FROM accounts \
             WHERE email_enc IS NOT NULL OR phone_enc IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        if let Some(e) = r.try_get::<Option<Vec<u8>>, _>("email_enc")? {
            return Ok(Some(("email", e)));
        }
        Ok(r.try_get::<Option<Vec<u8>>, _>("phone_enc")?
            .map(|p| ("phone", p)))
    }

    pub async fn clear_login_failures(&self, id: AccountId) -> Result<()> {
        sqlx::query(
            "UPDATE accounts SET failed_logins = 0, locked_until = 0 WHERE id = $1 AND (failed_logins <> 0 OR locked_until <> 0)",
        )
        .bind(id.as_i64())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Creates the account of a verified sign-up, consuming the sign-up code in the same
    /// transaction. `Ok(false)` when the code was consumed meanwhile (a concurrent verify won);
    /// `Err(Conflict)` when the identifier or the random id is already taken.
    pub async fn create_account_consuming_code(
        &self,
        code_id: &str,
        account: &NewAccount,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let consumed = sqlx::query(
            "UPDATE verification_codes SET consumed_at = $2 WHERE id = $1 AND consumed_at IS NULL",
        )
        .bind(code_id)
        .bind(account.created_at.millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if consumed != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO accounts (id, email_enc, email_bidx, phone_enc, phone_bidx, password_hash, \
             password_changed_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(account.id.as_i64())
        .bind(account.email_enc.clone())
        .bind(account.email_bidx.clone())
        .bind(account.phone_enc.clone())
        .bind(account.phone_bidx.clone())
        .bind(account.password_hash.clone())
        .bind(account.created_at.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Sets a new password from a verified reset code, and signs out everywhere: in one transaction
    /// the code is consumed, the hash replaced, every session revoked (their ids are returned) and
    /// `sessions_valid_after` moved to `now`. `Ok(None)` when the code was already used.
    pub async fn reset_password_consuming_code(
        &self,
        code_id: &str,
        id: AccountId,
        password_hash: &str,
        now: Timestamp,
    ) -> Result<Option<Vec<mica_core::SessionId>>> {
        let mut tx = self.writer.begin().await?;
        let consumed = sqlx::query(
            "UPDATE verification_codes SET consumed_at = $2 WHERE id = $1 AND consumed_at IS NULL",
        )
        .bind(code_id)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if consumed != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query(
            "UPDATE accounts SET password_hash = $2, password_changed_at = $3, sessions_valid_after = $3, \
             failed_logins = 0, locked_until = 0 WHERE id = $1",
        )
        .bind(id.as_i64())
        .bind(password_hash)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        let revoked = crate::sessions::revoke_all_in(&mut tx, id, now).await?;
        crate::app_passwords::revoke_all_app_passwords_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }
}

/// Locks the account's row for the rest of the transaction (a write that changes nothing):
/// what one account keeps a bounded or replaced set of (passkeys, app passwords, recovery
/// codes, security questions) is changed one transaction at a time, so two at once on
/// PostgreSQL can neither both pass a cap nor leave two sets.
pub(crate) async fn lock_account_row(
    conn: &mut sqlx::AnyConnection,
    account: AccountId,
) -> Result<()> {
    sqlx::query("UPDATE accounts SET id = id WHERE id = $1")
        .bind(account.as_i64())
        .execute(conn)
        .await?;
    Ok(())
}
