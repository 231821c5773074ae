//! Feedback and bug reports (CM-5): what a person sent from a device, with attachments, and
//! the operator's answer. Bodies and attachments arrive sealed.

use mica_core::{AccountId, Timestamp};
use sqlx::Row;

use crate::operator_log::{self, OperatorEntry};
use crate::{Result, Store, StoreError};

/// A report about to be stored.
#[derive(Debug, Clone)]
pub struct NewReport<'a> {
    pub id: &'a str,
    pub account: AccountId,
    pub kind: &'a str,
    pub body: &'a [u8],
    pub attachments: &'a [NewAttachment<'a>],
    pub created_at: Timestamp,
}

/// An attachment's bytes, sealed, and their size (its name and media type are in the
/// report's sealed body).
#[derive(Debug, Clone)]
pub struct NewAttachment<'a> {
    pub size: i64,
    pub content: &'a [u8],
}

#[derive(Debug, Clone)]
pub struct ReportRow {
    pub id: String,
    pub account: AccountId,
    pub kind: String,
    pub body: Vec<u8>,
    pub created_at: Timestamp,
    pub state: String,
    pub reply: Option<Vec<u8>>,
    pub replied_by: Option<String>,
    pub replied_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
    /// The size of each attachment, in order.
    pub attachments: Vec<i64>,
}

const REPORT_COLUMNS: &str =
    "id, account_id, kind, body, created_at, state, reply, replied_by, replied_at, closed_at";

fn report_of(r: &sqlx::any::AnyRow) -> Result<ReportRow> {
    Ok(ReportRow {
        id: r.try_get("id")?,
        account: AccountId::from_i64(r.try_get("account_id")?)
            .ok_or_else(|| StoreError::Corrupt("a report without an account".into()))?,
        kind: r.try_get("kind")?,
        body: r.try_get("body")?,
        created_at: Timestamp(r.try_get("created_at")?),
        state: r.try_get("state")?,
        reply: r.try_get("reply")?,
        replied_by: r.try_get("replied_by")?,
        replied_at: r.try_get::<Option<i64>, _>("replied_at")?.map(Timestamp),
        closed_at: r.try_get::<Option<i64>, _>("closed_at")?.map(Timestamp),
        attachments: Vec::new(),
    })
}

impl Store {
    /// Stores a report with its attachments, in one transaction — unless the account sent
    /// `max` reports since `since` already (false), counted under the account's lock so that
    /// reports sent at once cannot pass the limit together.
    pub async fn insert_report(
        &self,
        r: &NewReport<'_>,
        since: Timestamp,
        max: i64,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        crate::cloud::lock_account(&mut tx, r.account, 0).await?;
        let sent: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM feedback_reports \
             WHERE account_id = $1 AND created_at >= $2",
        )
        .bind(r.account.as_i64())
        .bind(since.millis())
        .fetch_one(&mut *tx)
        .await?;
        if sent >= max {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO feedback_reports (id, account_id, kind, body, created_at, state) \
             VALUES ($1, $2, $3, $4, $5, 'open')",
        )
        .bind(r.id)
        .bind(r.account.as_i64())
        .bind(r.kind)
        .bind(r.body)
        .bind(r.created_at.millis())
        .execute(&mut *tx)
        .await?;
        for (n, a) in r.attachments.iter().enumerate() {
            sqlx::query(
                "INSERT INTO feedback_attachments (report_id, n, size, content) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(r.id)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .bind(a.size)
            .bind(a.content)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn with_attachments(&self, mut rows: Vec<ReportRow>) -> Result<Vec<ReportRow>> {
        for row in &mut rows {
            row.attachments = sqlx::query_scalar(
                "SELECT size FROM feedback_attachments WHERE report_id = $1 ORDER BY n",
            )
            .bind(&row.id)
            .fetch_all(&self.reader)
            .await?;
        }
        Ok(rows)
    }

    /// The account's reports, newest first.
    pub async fn account_reports(&self, account: AccountId, limit: i64) -> Result<Vec<ReportRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {REPORT_COLUMNS} FROM feedback_reports WHERE account_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(account.as_i64())
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(report_of)
        .collect::<Result<Vec<_>>>()?;
        self.with_attachments(rows).await
    }

    /// Reports for the operator: the open ones oldest first (the queue to work through), or
    /// all of them newest first.
    pub async fn reports(&self, open_only: bool, limit: i64) -> Result<Vec<ReportRow>> {
        let sql = if open_only {
            format!(
                "SELECT {REPORT_COLUMNS} FROM feedback_reports WHERE state = 'open' \
                 ORDER BY created_at, id LIMIT $1"
            )
        } else {
            format!(
                "SELECT {REPORT_COLUMNS} FROM feedback_reports \
                 ORDER BY created_at DESC, id DESC LIMIT $1"
            )
        };
        let rows = sqlx::query(&sql)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(report_of)
            .collect::<Result<Vec<_>>>()?;
        self.with_attachments(rows).await
    }

    pub async fn report(&self, id: &str) -> Result<Option<ReportRow>> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {REPORT_COLUMNS} FROM feedback_reports WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        else {
            return Ok(None);
        };
        Ok(self.with_attachments(vec![report_of(&row)?]).await?.pop())
    }

    /// One attachment's sealed content.
    pub async fn report_attachment(&self, id: &str, n: i64) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT content FROM feedback_attachments WHERE report_id = $1 AND n = $2",
        )
        .bind(id)
        .bind(n)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// The operator answers a report (`reply`, sealed) and/or closes it, recorded in the
    /// operator's log in the same transaction. False when there is no such report.
    pub async fn answer_report(
        &self,
        id: &str,
        reply: Option<&[u8]>,
        close: bool,
        entry: &OperatorEntry<'_>,
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE feedback_reports SET \
             reply = COALESCE($2, reply), \
             replied_by = CASE WHEN $2 IS NULL THEN replied_by ELSE $3 END, \
             replied_at = CASE WHEN $2 IS NULL THEN replied_at ELSE $4 END, \
             state = CASE WHEN $5 = 1 THEN 'closed' ELSE state END, \
             closed_at = CASE WHEN $5 = 1 THEN COALESCE(closed_at, $4) ELSE closed_at END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(reply)
        .bind(entry.operator)
        .bind(now.millis())
        .bind(i64::from(close))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if done {
            operator_log::record(&mut tx, entry, now).await?;
            tx.commit().await?;
        }
        Ok(done)
    }
}
