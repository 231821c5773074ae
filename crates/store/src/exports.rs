//! Data-export records (the archives themselves are files in the data folder).

use mica_core::{AccountId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store};

#[derive(Debug, Clone)]
pub struct ExportRow {
    pub id: String,
    pub account_id: AccountId,
    pub status: String,
    pub size: Option<i64>,
    pub created_at: Timestamp,
    pub ready_at: Option<Timestamp>,
    pub expires_at: Timestamp,
}

fn export_from_row(r: &AnyRow) -> Result<ExportRow> {
    let aid: i64 = r.try_get("account_id")?;
    Ok(ExportRow {
        id: r.try_get("id")?,
        account_id: AccountId::from_i64(aid)
            .ok_or_else(|| crate::StoreError::Corrupt(format!("account id {aid}")))?,
        status: r.try_get("status")?,
        size: r.try_get("size")?,
        created_at: Timestamp(r.try_get("created_at")?),
        ready_at: r.try_get::<Option<i64>, _>("ready_at")?.map(Timestamp),
        expires_at: Timestamp(r.try_get("expires_at")?),
    })
}

const COLS: &str = "id, account_id, status, size, created_at, ready_at, expires_at";

impl Store {
    /// Records a pending export and queues the account's export job, in one transaction (a
    /// crash between the two cannot leave an export nobody builds).
    pub async fn insert_export(
        &self,
        id: &str,
        account: AccountId,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO exports (id, account_id, status, created_at, expires_at) VALUES ($1, $2, 'pending', $3, $4)",
        )
        .bind(id)
        .bind(account.as_i64())
        .bind(now.millis())
        .bind(expires_at.millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO jobs (kind, account_id, run_after, created_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (account_id, kind) DO NOTHING",
        )
        .bind(crate::JOB_EXPORT)
        .bind(account.as_i64())
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes an export job that has nothing left to build: `false` (and the job stays) when
    /// an export was asked for meanwhile — its request found this job queued and relied on it.
    pub async fn finish_export_job(&self, job: i64) -> Result<bool> {
        let n = sqlx::query(
            "DELETE FROM jobs WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM exports e \
             WHERE e.account_id = jobs.account_id AND e.status = 'pending')",
        )
        .bind(job)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn exports(&self, account: AccountId) -> Result<Vec<ExportRow>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM exports WHERE account_id = $1 ORDER BY created_at DESC, id"
        ))
        .bind(account.as_i64())
        .fetch_all(&self.writer)
        .await?
        .iter()
        .map(export_from_row)
        .collect()
    }

    /// Exports of the account still waiting to be built.
    pub async fn pending_exports(&self, account: AccountId) -> Result<Vec<ExportRow>> {
        Ok(self
            .exports(account)
            .await?
            .into_iter()
            .filter(|e| e.status == "pending")
            .collect())
    }

    pub async fn export_ready(
        &self,
        id: &str,
        size: i64,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<()> {
        // Only a pending one: a second builder (a lease that ran out) does not redo it.
        sqlx::query("UPDATE exports SET status = 'ready', size = $2, ready_at = $3, expires_at = $4 WHERE id = $1 AND status = 'pending'")
            .bind(id)
            .bind(size)
            .bind(now.millis())
            .bind(expires_at.millis())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Exports whose download window closed, of every account.
    pub async fn expired_exports(&self, now: Timestamp) -> Result<Vec<ExportRow>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM exports WHERE expires_at <= $1"
        ))
        .bind(now.millis())
        .fetch_all(&self.writer)
        .await?
        .iter()
        .map(export_from_row)
        .collect()
    }

    pub async fn delete_export(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM exports WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Sessions of an account, every one (for the export).
    pub async fn all_sessions(&self, account: AccountId) -> Result<Vec<crate::SessionRow>> {
        let rows = sqlx::query(
            "SELECT s.id, s.account_id, s.created_at, s.last_used_at, s.expires_at, s.revoked_at, s.ip, \
             s.user_agent, s.device_model, s.os_version, s.client, s.oidc_client, s.oidc_scope, s.oidc_auth_time \
             FROM sessions s WHERE s.account_id = $1 \
             ORDER BY s.created_at",
        )
        .bind(account.as_i64())
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(crate::sessions::session_from_row).collect()
    }
}
