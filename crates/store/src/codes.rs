//! One-time verification codes (sign-up, password reset; later step-up and factor changes).

use mica_core::{AccountId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store};

#[derive(Debug, Clone)]
pub struct CodeRow {
    pub id: String,
    pub purpose: String,
    pub account_id: Option<AccountId>,
    pub target_kind: String,
    pub target_enc: Option<Vec<u8>>,
    pub target_bidx: Vec<u8>,
    pub code_hash: Vec<u8>,
    pub payload: Option<String>,
    pub attempts: i64,
    pub send_count: i64,
    pub created_at: Timestamp,
    pub last_sent_at: Timestamp,
    pub expires_at: Timestamp,
    pub consumed_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct NewCode {
    pub id: String,
    pub purpose: &'static str,
    pub account_id: Option<AccountId>,
    pub target_kind: &'static str,
    pub target_enc: Option<Vec<u8>>,
    pub target_bidx: Vec<u8>,
    pub code_hash: Vec<u8>,
    pub payload: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

fn code_from_row(r: &AnyRow) -> Result<CodeRow> {
    Ok(CodeRow {
        id: r.try_get("id")?,
        purpose: r.try_get("purpose")?,
        account_id: r
            .try_get::<Option<i64>, _>("account_id")?
            .and_then(AccountId::from_i64),
        target_kind: r.try_get("target_kind")?,
        target_enc: r.try_get("target_enc")?,
        target_bidx: r.try_get("target_bidx")?,
        code_hash: r.try_get("code_hash")?,
        payload: r.try_get("payload")?,
        attempts: r.try_get("attempts")?,
        send_count: r.try_get("send_count")?,
        created_at: Timestamp(r.try_get("created_at")?),
        last_sent_at: Timestamp(r.try_get("last_sent_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        consumed_at: r.try_get::<Option<i64>, _>("consumed_at")?.map(Timestamp),
    })
}

impl Store {
    pub async fn insert_code(&self, c: &NewCode) -> Result<()> {
        sqlx::query(
            "INSERT INTO verification_codes (id, purpose, account_id, target_kind, target_enc, target_bidx, \
             code_hash, payload, created_at, last_sent_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
        )
        .bind(c.id.clone())
        .bind(c.purpose)
        .bind(c.account_id.map(AccountId::as_i64))
        .bind(c.target_kind)
        .bind(c.target_enc.clone())
        .bind(c.target_bidx.clone())
        .bind(c.code_hash.clone())
        .bind(c.payload.clone())
        .bind(c.created_at.millis())
        .bind(c.expires_at.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn code(&self, id: &str) -> Result<Option<CodeRow>> {
        // Read from the writer: a code is read right after it is written or bumped.
        sqlx::query("SELECT * FROM verification_codes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.writer)
            .await?
            .as_ref()
            .map(code_from_row)
            .transpose()
    }

    /// How many codes of `purpose` were sent to a destination since `since` (counting resends),
    /// and when the last one went out.
    pub async fn codes_sent_to(
        &self,
        target_bidx: &[u8],
        purpose: &str,
        since: Timestamp,
    ) -> Result<(i64, Option<Timestamp>)> {
        let r = sqlx::query(
            "SELECT CAST(COALESCE(SUM(send_count), 0) AS BIGINT) AS n, MAX(last_sent_at) AS last FROM verification_codes \
             WHERE target_bidx = $1 AND purpose = $2 AND last_sent_at >= $3",
        )
        .bind(target_bidx.to_vec())
        .bind(purpose)
        .bind(since.millis())
        .fetch_one(&self.writer)
        .await?;
        Ok((
            r.try_get("n")?,
            r.try_get::<Option<i64>, _>("last")?.map(Timestamp),
        ))
    }

    /// Takes one of a pending, unexpired record's attempts *before* a guess is compared, so
    /// concurrent guesses cannot all be compared against the count read before any of them:
    /// returns the attempts now recorded, or `None` when none is left (or the record is used,
    /// expired or gone).
    pub async fn take_code_attempt(
        &self,
        id: &str,
        max: i64,
        now: Timestamp,
    ) -> Result<Option<i64>> {
        let r = sqlx::query(
            "UPDATE verification_codes SET attempts = attempts + 1 WHERE id = $1 \
             AND consumed_at IS NULL AND expires_at > $3 AND attempts < $2 RETURNING attempts",
        )
        .bind(id)
        .bind(max)
        .bind(now.millis())
        .fetch_optional(&self.writer)
        .await?;
        r.map(|r| r.try_get::<i64, _>("attempts").map_err(Into::into))
            .transpose()
    }

    /// Gives back an attempt taken for a guess that was right.
    pub async fn return_code_attempt(&self, id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE verification_codes SET attempts = attempts - 1 WHERE id = $1 AND attempts > 0",
        )
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Replaces the code of a pending record (resend): new hash, new expiry; its attempts start
    /// again only if `fresh_attempts` (a sign-up's new code) — a two-step challenge's attempts
    /// also count its authenticator and recovery-code guesses, which a resend must not renew.
    pub async fn replace_code(
        &self,
        id: &str,
        code_hash: &[u8],
        now: Timestamp,
        expires_at: Timestamp,
        fresh_attempts: bool,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE verification_codes SET code_hash = $2, last_sent_at = $3, expires_at = $4, \
             attempts = CASE WHEN $5 = 1 THEN 0 ELSE attempts END, \
             send_count = send_count + 1 WHERE id = $1 AND consumed_at IS NULL",
        )
        .bind(id)
        .bind(code_hash.to_vec())
        .bind(now.millis())
        .bind(expires_at.millis())
        .bind(i64::from(fresh_attempts))
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Deletes codes that expired before `before`; returns how many.
    pub async fn purge_codes(&self, before: Timestamp) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM verification_codes WHERE expires_at < $1")
                .bind(before.millis())
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }
}
