//! Notices for an account's linked devices (a request to recover the account, say). A notice is
//! kept until it expires or what it is about is withdrawn, so a device that was off when it was
//! sent is told when it next connects; each device says when it has shown one, and is not sent
//! it again.

use mica_core::{AccountId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// A notice as stored.
#[derive(Debug, Clone)]
pub struct NoticeRow {
    pub id: String,
    pub account_id: AccountId,
    pub kind: String,
    /// The title and text, sealed.
    pub body: Vec<u8>,
    pub created_at: Timestamp,
}

/// A notice to store.
#[derive(Debug)]
pub struct NewNotice<'a> {
    pub id: &'a str,
    pub account: AccountId,
    pub kind: &'a str,
    pub body: &'a [u8],
    pub about: Option<&'a str>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

fn notice_row(r: &AnyRow) -> Result<NoticeRow> {
    let account: i64 = r.try_get("account_id")?;
    Ok(NoticeRow {
        id: r.try_get("id")?,
        account_id: AccountId::from_i64(account)
            .ok_or_else(|| StoreError::Corrupt(format!("account id {account}")))?,
        kind: r.try_get("kind")?,
        body: r.try_get("body")?,
        created_at: Timestamp::from_millis(r.try_get("created_at")?),
    })
}

impl Store {
    pub async fn insert_device_notice(&self, n: &NewNotice<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO device_notices (id, account_id, kind, body, about, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(n.id)
        .bind(n.account.as_i64())
        .bind(n.kind)
        .bind(n.body.to_vec())
        .bind(n.about)
        .bind(n.created_at.millis())
        .bind(n.expires_at.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// One notice, if it is still kept and has not expired.
    pub async fn device_notice(&self, id: &str, now: Timestamp) -> Result<Option<NoticeRow>> {
        sqlx::query(
            "SELECT id, account_id, kind, body, created_at FROM device_notices \
             WHERE id = $1 AND expires_at > $2",
        )
        .bind(id)
        .bind(now.millis())
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(notice_row)
        .transpose()
    }

    /// The account's notices that have not expired and that this device has not shown yet,
    /// oldest first.
    pub async fn unseen_device_notices(
        &self,
        account: AccountId,
        device: &str,
        now: Timestamp,
    ) -> Result<Vec<NoticeRow>> {
        sqlx::query(
            "SELECT id, account_id, kind, body, created_at FROM device_notices n \
             WHERE account_id = $1 AND expires_at > $2 AND NOT EXISTS \
             (SELECT 1 FROM device_notices_seen s WHERE s.notice_id = n.id AND s.device_id = $3) \
             ORDER BY created_at, id",
        )
        .bind(account.as_i64())
        .bind(now.millis())
        .bind(device)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(notice_row)
        .collect()
    }

    /// Records that the device showed the notice; `false` when the account has no such
    /// notice (never sent, expired and purged, or withdrawn). Saying so twice is not an error.
    pub async fn mark_device_notice_seen(
        &self,
        account: AccountId,
        device: &str,
        notice: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT id FROM device_notices WHERE id = $1 AND account_id = $2")
                .bind(notice)
                .bind(account.as_i64())
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO device_notices_seen (notice_id, device_id, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (notice_id, device_id) DO NOTHING",
        )
        .bind(notice)
        .bind(device)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Withdraws the notices about something (a recovery request that was cancelled or
    /// denied): devices not told yet are not told. How many went.
    pub async fn withdraw_device_notices(&self, about: &str) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "DELETE FROM device_notices_seen WHERE notice_id IN \
             (SELECT id FROM device_notices WHERE about = $1)",
        )
        .bind(about)
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query("DELETE FROM device_notices WHERE about = $1")
            .bind(about)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    /// Forgets the notices that expired before `now`, and who saw them.
    pub async fn purge_device_notices(&self, now: Timestamp) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "DELETE FROM device_notices_seen WHERE notice_id IN \
             (SELECT id FROM device_notices WHERE expires_at <= $1)",
        )
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query("DELETE FROM device_notices WHERE expires_at <= $1")
            .bind(now.millis())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }
}
