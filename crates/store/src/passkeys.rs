//! Passkeys and the state of WebAuthn ceremonies in progress.

use mica_core::{AccountId, SessionId, Timestamp};
use sqlx::Row;

use crate::{Result, Store, StoreError};

#[derive(Debug, Clone)]
pub struct PasskeyRow {
    pub id: String,
    pub credential_id: String,
    pub name_enc: Vec<u8>,
    /// The credential as the WebAuthn library serialises it.
    pub credential: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// A ceremony in progress.
#[derive(Debug, Clone)]
pub struct WebauthnChallengeRow {
    pub purpose: String,
    pub account_id: AccountId,
    pub session_id: Option<SessionId>,
    pub state: String,
    pub expires_at: Timestamp,
}

fn passkey_row(r: &sqlx::any::AnyRow) -> Result<PasskeyRow> {
    Ok(PasskeyRow {
        id: r.try_get("id")?,
        credential_id: r.try_get("credential_id")?,
        name_enc: r.try_get("name_enc")?,
        credential: r.try_get("credential")?,
        created_at: Timestamp(r.try_get("created_at")?),
        last_used_at: r.try_get::<Option<i64>, _>("last_used_at")?.map(Timestamp),
    })
}

impl Store {
    /// Records a passkey. `false` when the credential is already registered (to any account).
    pub async fn insert_passkey(
        &self,
        account: AccountId,
        row: &PasskeyRow,
        max_per_account: i64,
    ) -> Result<PasskeyInsert> {
        let mut tx = self.writer.begin().await?;
        crate::accounts::lock_account_row(&mut tx, account).await?;
        let taken: Option<i64> =
            sqlx::query_scalar("SELECT account_id FROM passkeys WHERE credential_id = $1")
                .bind(&row.credential_id)
                .fetch_optional(&mut *tx)
                .await?;
        if taken.is_some() {
            return Ok(PasskeyInsert::CredentialTaken);
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM passkeys WHERE account_id = $1")
            .bind(account.as_i64())
            .fetch_one(&mut *tx)
            .await?;
        if count >= max_per_account {
            return Ok(PasskeyInsert::TooMany);
        }
        let inserted = sqlx::query(
            "INSERT INTO passkeys (id, account_id, credential_id, name_enc, credential, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL) ON CONFLICT (credential_id) DO NOTHING",
        )
        .bind(&row.id)
        .bind(account.as_i64())
        .bind(&row.credential_id)
        .bind(row.name_enc.clone())
        .bind(&row.credential)
        .bind(row.created_at.millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted != 1 {
            return Ok(PasskeyInsert::CredentialTaken);
        }
        tx.commit().await?;
        Ok(PasskeyInsert::Inserted)
    }

    /// The account's passkeys, oldest first.
    pub async fn passkeys(&self, account: AccountId) -> Result<Vec<PasskeyRow>> {
        sqlx::query(
            "SELECT id, credential_id, name_enc, credential, created_at, last_used_at FROM passkeys \
             WHERE account_id = $1 ORDER BY created_at, id",
        )
        .bind(account.as_i64())
        .fetch_all(&self.writer)
        .await?
        .iter()
        .map(passkey_row)
        .collect()
    }

    pub async fn count_passkeys(&self, account: AccountId) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM passkeys WHERE account_id = $1")
                .bind(account.as_i64())
                .fetch_one(&self.reader)
                .await?,
        )
    }

    /// After a successful assertion: the new counter state and the time of use.
    pub async fn passkey_used(
        &self,
        account: AccountId,
        credential_id: &str,
        credential: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE passkeys SET last_used_at = $1, credential = COALESCE($2, credential) \
             WHERE account_id = $3 AND credential_id = $4",
        )
        .bind(now.millis())
        .bind(credential)
        .bind(account.as_i64())
        .bind(credential_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn delete_passkey(&self, account: AccountId, id: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM passkeys WHERE account_id = $1 AND id = $2")
            .bind(account.as_i64())
            .bind(id)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn insert_webauthn_challenge(
        &self,
        id: &str,
        purpose: &str,
        account: AccountId,
        session: Option<&SessionId>,
        state: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO webauthn_challenges (id, purpose, account_id, session_id, state, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(purpose)
        .bind(account.as_i64())
        .bind(session.map(|s| s.0.clone()))
        .bind(state)
        .bind(now.millis())
        .bind(expires_at.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Takes a ceremony's state: whoever gets it is the only one who can finish that ceremony.
    pub async fn take_webauthn_challenge(&self, id: &str) -> Result<Option<WebauthnChallengeRow>> {
        let row = sqlx::query(
            "DELETE FROM webauthn_challenges WHERE id = $1 \
             RETURNING purpose, account_id, session_id, state, expires_at",
        )
        .bind(id)
        .fetch_optional(&self.writer)
        .await?;
        row.map(|r| -> Result<_> {
            let account: i64 = r.try_get("account_id")?;
            Ok(WebauthnChallengeRow {
                purpose: r.try_get("purpose")?,
                account_id: AccountId::from_i64(account)
                    .ok_or_else(|| StoreError::Corrupt(format!("account id {account}")))?,
                session_id: r.try_get::<Option<String>, _>("session_id")?.map(SessionId),
                state: r.try_get("state")?,
                expires_at: Timestamp(r.try_get("expires_at")?),
            })
        })
        .transpose()
    }

    pub async fn purge_webauthn_challenges(&self, before: Timestamp) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM webauthn_challenges WHERE expires_at < $1")
                .bind(before.millis())
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }
}

/// What recording a passkey led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasskeyInsert {
    Inserted,
    /// This authenticator credential is already registered.
    CredentialTaken,
    TooMany,
}
