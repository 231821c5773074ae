//! Recovery factors and security questions.

use mica_core::{AccountId, Timestamp};
use sqlx::Row;

use crate::{Result, Store};

#[derive(Debug, Clone)]
pub struct RecoveryFactorRow {
    pub kind: String,
    pub value_enc: Vec<u8>,
    pub verified_at: Timestamp,
}

impl Store {
    /// Sets (replaces) a verified recovery factor.
    pub async fn put_recovery_factor(
        &self,
        account: AccountId,
        kind: &str,
        value_enc: &[u8],
        value_bidx: &[u8],
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO recovery_factors (account_id, kind, value_enc, value_bidx, verified_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (account_id, kind) DO UPDATE SET value_enc = excluded.value_enc, \
             value_bidx = excluded.value_bidx, verified_at = excluded.verified_at",
        )
        .bind(account.as_i64())
        .bind(kind)
        .bind(value_enc.to_vec())
        .bind(value_bidx.to_vec())
        .bind(now.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn delete_recovery_factor(&self, account: AccountId, kind: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM recovery_factors WHERE account_id = $1 AND kind = $2")
            .bind(account.as_i64())
            .bind(kind)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn recovery_factors(&self, account: AccountId) -> Result<Vec<RecoveryFactorRow>> {
        sqlx::query("SELECT kind, value_enc, verified_at FROM recovery_factors WHERE account_id = $1 ORDER BY kind")
            .bind(account.as_i64())
            .fetch_all(&self.writer)
            .await?
            .iter()
            .map(|r| {
                Ok(RecoveryFactorRow {
                    kind: r.try_get("kind")?,
                    value_enc: r.try_get("value_enc")?,
                    verified_at: Timestamp(r.try_get("verified_at")?),
                })
            })
            .collect()
    }

    /// The account whose verified recovery factor has this blind index.
    pub async fn account_by_recovery(
        &self,
        value_bidx: &[u8],
    ) -> Result<Option<(AccountId, String)>> {
        let row = sqlx::query("SELECT account_id, kind FROM recovery_factors WHERE value_bidx = $1 ORDER BY account_id LIMIT 1")
            .bind(value_bidx.to_vec())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row
            .map(|r| -> Result<_> {
                Ok((
                    r.try_get::<i64, _>("account_id")?,
                    r.try_get::<String, _>("kind")?,
                ))
            })
            .transpose()?
            .and_then(|(id, kind)| AccountId::from_i64(id).map(|a| (a, kind))))
    }

    /// Replaces the security questions.
    pub async fn put_security_questions(
        &self,
        account: AccountId,
        qa: &[(String, String)],
        now: Timestamp,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        crate::accounts::lock_account_row(&mut tx, account).await?;
        sqlx::query("DELETE FROM security_questions WHERE account_id = $1")
            .bind(account.as_i64())
            .execute(&mut *tx)
            .await?;
        for (i, (q, hash)) in qa.iter().enumerate() {
            sqlx::query(
                "INSERT INTO security_questions (account_id, position, question, answer_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(account.as_i64())
            .bind(i64::try_from(i).unwrap_or(0) + 1)
            .bind(q.clone())
            .bind(hash.clone())
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The questions (not the answers), in order.
    pub async fn security_questions(&self, account: AccountId) -> Result<Vec<(String, String)>> {
        sqlx::query("SELECT question, answer_hash FROM security_questions WHERE account_id = $1 ORDER BY position")
            .bind(account.as_i64())
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("question")?, r.try_get("answer_hash")?)))
            .collect()
    }
}
