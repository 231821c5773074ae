//! App passwords: per-device passwords for HTTP Basic clients (WebDAV), stored as hashes.

use mica_core::{AccountId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store};

#[derive(Debug, Clone)]
pub struct AppPasswordRow {
    pub id: String,
    pub account_id: AccountId,
    pub name: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

fn row(r: &AnyRow) -> Result<AppPasswordRow> {
    let account: i64 = r.try_get("account_id")?;
    Ok(AppPasswordRow {
        id: r.try_get("id")?,
        account_id: AccountId::from_i64(account)
            .ok_or_else(|| crate::StoreError::Corrupt(format!("account id {account}")))?,
        name: r.try_get("name")?,
        created_at: Timestamp(r.try_get("created_at")?),
        last_used_at: r.try_get::<Option<i64>, _>("last_used_at")?.map(Timestamp),
    })
}

const COLUMNS: &str = "id, account_id, name, created_at, last_used_at";

impl Store {
    /// Records an app password unless the account already keeps `max`: `false` then.
    pub async fn create_app_password(
        &self,
        account: AccountId,
        id: &str,
        name: &str,
        secret_hash: &[u8],
        now: Timestamp,
        max: i64,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        crate::accounts::lock_account_row(&mut tx, account).await?;
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM app_passwords WHERE account_id = $1")
                .bind(account.as_i64())
                .fetch_one(&mut *tx)
                .await?;
        if count >= max {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO app_passwords (id, account_id, name, secret_hash, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(id)
        .bind(account.as_i64())
        .bind(name)
        .bind(secret_hash.to_vec())
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn app_passwords(&self, account: AccountId) -> Result<Vec<AppPasswordRow>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM app_passwords WHERE account_id = $1 ORDER BY created_at, id"
        ))
        .bind(account.as_i64())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(row)
        .collect()
    }

    /// Deletes one of the account's app passwords; returns whether it existed.
    pub async fn delete_app_password(&self, account: AccountId, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM app_passwords WHERE account_id = $1 AND id = $2")
            .bind(account.as_i64())
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The app password with this hash, if any — of an active account only (not one being
    /// deleted).
    pub async fn app_password_by_hash(&self, secret_hash: &[u8]) -> Result<Option<AppPasswordRow>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM app_passwords WHERE secret_hash = $1 \
             AND account_id IN (SELECT id FROM accounts WHERE status = 'active')"
        ))
        .bind(secret_hash.to_vec())
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(row)
        .transpose()
    }

    /// Records a use (at most about once a minute per password, to spare the writer).
    pub async fn touch_app_password(&self, id: &str, now: Timestamp) -> Result<()> {
        sqlx::query(
            "UPDATE app_passwords SET last_used_at = $2 WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(id)
        .bind(now.millis())
        .bind(now.millis() - 60_000)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

/// Revokes every app password of the account, inside a transaction that changes or resets its
/// password or starts its deletion: an app password is a stand-in for the main password, and
/// goes with it (as other services' app passwords do).
pub(crate) async fn revoke_all_app_passwords_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    account: mica_core::AccountId,
) -> Result<()> {
    sqlx::query("DELETE FROM app_passwords WHERE account_id = $1")
        .bind(account.as_i64())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
