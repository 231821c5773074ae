//! Durable jobs and the account-deletion registry.
//!
//! Every table that holds an account's data is listed in [`ACCOUNT_DATA`] with the condition that
//! selects the account's rows. Deleting an account walks that list one table per transaction,
//! recording its progress in the job row, so a crash resumes where it stopped; the account row
//! and the job itself go last, together. A test enumerates the live schema and fails when a table
//! is missing from the list, so a feature cannot add a table and forget its deletion.

use mica_core::{AccountId, SessionId, Timestamp};
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// A table holding account data, and the SQL condition (with `$1` = the account id) that selects
/// the account's rows in it. Children first: the order is the deletion order.
#[derive(Debug, Clone, Copy)]
pub struct AccountTable {
    pub table: &'static str,
    pub condition: &'static str,
}

/// Tables that name accounts but are not theirs, so they outlive them: the operator's log, the
/// record of what operators did (an erasure included, which it then proves). They hold an
/// account's number and the operator's own words, never the account's data. Also the tables of
/// the server's own (the applications registered with its OpenID provider, its signing keys),
/// which no account owns.
pub const OUTLIVES_ACCOUNTS: &[&str] = &["operator_log", "oidc_clients", "oidc_keys", "themes"];

pub const ACCOUNT_DATA: &[AccountTable] = &[
    AccountTable {
        table: "verification_codes",
        // Codes the account asked for, and codes sent to its addresses (sign-up, reset) that
        // carry no account id.
        condition:
            "account_id = $1 OR target_bidx IN (SELECT email_bidx FROM accounts WHERE id = $1) \
                    OR target_bidx IN (SELECT phone_bidx FROM accounts WHERE id = $1) \
                    OR target_bidx IN (SELECT value_bidx FROM recovery_factors WHERE account_id = $1)",
    },
    AccountTable {
        table: "refresh_tokens",
        condition: "session_id IN (SELECT id FROM sessions WHERE account_id = $1)",
    },
    AccountTable {
        table: "oidc_codes",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "oidc_device_codes",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "oidc_grants",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "credit_ledger",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "wallets",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "purchases",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "subscriptions",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "feedback_attachments",
        condition: "report_id IN (SELECT id FROM feedback_reports WHERE account_id = $1)",
    },
    AccountTable {
        table: "feedback_reports",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "sessions",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "login_events",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "security_events",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "recovery_codes",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "totp_factors",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "profiles",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "recovery_requests",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "recovery_factors",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "security_questions",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "sync_batches",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "sync_devices",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "app_passwords",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "media",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "backup_parts",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "backups",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "upload_parts",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "uploads",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "file_chunks",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "files",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "blob_chunks",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "blob_trash",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "recycle_bin",
        condition: "account_id = $1",
    },
    // A gallery's album rows before its items (they refer to them).
    AccountTable {
        table: "item_albums",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "album_backfill",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "albums",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "items",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "collections",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "cloud_usage",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "cloud_accounts",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "webauthn_challenges",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "passkeys",
        condition: "account_id = $1",
    },
    // Devices: notices, commands and locations before the devices; activation locks are
    // released.
    AccountTable {
        table: "device_notices_seen",
        condition: "notice_id IN (SELECT id FROM device_notices WHERE account_id = $1)",
    },
    AccountTable {
        table: "device_notices",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "device_commands",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "device_locations",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "devices",
        condition: "account_id = $1",
    },
    AccountTable {
        table: "activation_locks",
        condition: "account_id = $1",
    },
    // Link requests the account approved or declined (undecided ones belong to no account
    // and expire within minutes).
    AccountTable {
        table: "device_link_requests",
        condition: "account_id = $1",
    },
    // The archives' files are removed (by the deletion job) before this step.
    AccountTable {
        table: "exports",
        condition: "account_id = $1",
    },
    // Last, in the same transaction as the end of the job.
    AccountTable {
        table: "accounts",
        condition: "id = $1",
    },
    AccountTable {
        table: "jobs",
        condition: "account_id = $1",
    },
];

pub const JOB_DELETE_ACCOUNT: &str = "delete_account";
pub const JOB_EXPORT: &str = "export";

/// A claimed job.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub account_id: Option<AccountId>,
    pub step: i64,
    pub attempts: i64,
}

impl Store {
    /// Marks the account as being deleted, revokes every session (ids returned) and queues the
    /// deletion job, atomically; `None` when the account is already being deleted, or gone.
    pub async fn schedule_account_deletion(
        &self,
        account: AccountId,
        now: Timestamp,
        by_operator: Option<&crate::OperatorEntry<'_>>,
    ) -> Result<Option<Vec<SessionId>>> {
        let mut tx = self.writer.begin().await?;
        let marked = sqlx::query(
            "UPDATE accounts SET status = 'deleting' WHERE id = $1 \
             AND status IN ('active', 'suspended')",
        )
        .bind(account.as_i64())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let revoked = crate::sessions::revoke_all_in(&mut tx, account, now).await?;
        crate::app_passwords::revoke_all_app_passwords_in(&mut tx, account).await?;
        sqlx::query(
            "INSERT INTO jobs (kind, account_id, run_after, created_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (account_id, kind) DO NOTHING",
        )
        .bind(JOB_DELETE_ACCOUNT)
        .bind(account.as_i64())
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        if let Some(e) = by_operator {
            crate::operator_log::record(&mut tx, e, now).await?;
        }
        tx.commit().await?;
        Ok(Some(revoked))
    }

    /// Queues a job of `kind` for an account; `false` when one is already queued.
    pub async fn enqueue_job(
        &self,
        kind: &str,
        account: AccountId,
        now: Timestamp,
    ) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO jobs (kind, account_id, run_after, created_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (account_id, kind) DO NOTHING",
        )
        .bind(kind)
        .bind(account.as_i64())
        .bind(now.millis())
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Removes a finished job.
    pub async fn finish_job(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Claims the oldest due job for `lease_ms`; a job whose lease ran out (its node died) is due
    /// again. Two nodes never hold the same job: the claim is a conditional update.
    pub async fn claim_job(&self, now: Timestamp, lease_ms: i64) -> Result<Option<JobRow>> {
        let row = sqlx::query(
            "UPDATE jobs SET lease_until = $2, attempts = attempts + 1 \
             WHERE id = (SELECT id FROM jobs WHERE run_after <= $1 AND lease_until <= $1 ORDER BY id LIMIT 1) \
             AND lease_until <= $1 \
             RETURNING id, kind, account_id, step, attempts",
        )
        .bind(now.millis())
        .bind(now.millis() + lease_ms)
        .fetch_optional(&self.writer)
        .await?;
        row.map(|r| {
            Ok(JobRow {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                account_id: r
                    .try_get::<Option<i64>, _>("account_id")?
                    .and_then(AccountId::from_i64),
                step: r.try_get("step")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .transpose()
    }

    /// Runs step `job.step` of an account deletion: deletes the account's rows from one table
    /// and records the progress in the same transaction. Returns `true` when the deletion is
    /// complete (the account and the job are gone).
    pub async fn account_deletion_step(&self, job: &JobRow) -> Result<bool> {
        let account = job
            .account_id
            .ok_or_else(|| StoreError::Corrupt(format!("job {} has no account", job.id)))?;
        let step = usize::try_from(job.step).unwrap_or(usize::MAX);
        let last = ACCOUNT_DATA.len() - 2; // "accounts", then "jobs", together
        let mut tx = self.writer.begin().await?;
        if step >= last {
            for t in &ACCOUNT_DATA[last..] {
                sqlx::query(&format!("DELETE FROM {} WHERE {}", t.table, t.condition))
                    .bind(account.as_i64())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            return Ok(true);
        }
        let t = &ACCOUNT_DATA[step];
        let sql = if t.table == "blob_trash" {
            // Intents outlive the account, handed to no account (0): an upload in flight when
            // the account went may store its object after the account's last sweep of the
            // blob store, and only its intent tells the collector to delete it when due.
            "UPDATE blob_trash SET account_id = 0 WHERE account_id = $1".to_owned()
        } else {
            format!("DELETE FROM {} WHERE {}", t.table, t.condition)
        };
        sqlx::query(&sql)
            .bind(account.as_i64())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE jobs SET step = $2 WHERE id = $1")
            .bind(job.id)
            .bind(job.step + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(false)
    }

    /// Gives a claimed job back with an error, to be retried after `retry_at`.
    /// Moves a running job's lease on (the node holding it is still at work).
    pub async fn renew_job_lease(&self, id: i64, until: Timestamp) -> Result<()> {
        sqlx::query("UPDATE jobs SET lease_until = $2 WHERE id = $1 AND lease_until > 0")
            .bind(id)
            .bind(until.millis())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn release_job(&self, id: i64, error: &str, retry_at: Timestamp) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET lease_until = 0, run_after = $2, last_error = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(retry_at.millis())
        .bind(error)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// How many of an account's rows each registered table still holds (for integrity checks).
    pub async fn account_row_counts(&self, account: AccountId) -> Result<Vec<(&'static str, i64)>> {
        let mut out = Vec::new();
        for t in ACCOUNT_DATA {
            let r = sqlx::query(&format!(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {} WHERE {}",
                t.table, t.condition
            ))
            .bind(account.as_i64())
            .fetch_one(&self.reader)
            .await?;
            out.push((t.table, r.try_get("n")?));
        }
        Ok(out)
    }

    /// Rows of `table` whose `column` equals `value` (integrity checks and tests).
    pub async fn count_where(&self, table: &str, column: &str, value: i64) -> Result<i64> {
        let ident = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !ident(table) || !ident(column) {
            return Err(StoreError::Corrupt(format!(
                "not an identifier: {table}.{column}"
            )));
        }
        let r = sqlx::query(&format!(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table} WHERE {column} = $1"
        ))
        .bind(value)
        .fetch_one(&self.reader)
        .await?;
        Ok(r.try_get("n")?)
    }

    /// Column names of a table.
    pub async fn table_columns(&self, table: &str) -> Result<Vec<String>> {
        let rows = match self.backend {
            crate::Backend::Sqlite => {
                sqlx::query("SELECT name FROM pragma_table_info($1)")
                    .bind(table)
                    .fetch_all(&self.reader)
                    .await?
            }
            crate::Backend::Postgres => {
                sqlx::query(
                    "SELECT CAST(column_name AS TEXT) AS name FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1",
                )
                .bind(table)
                .fetch_all(&self.reader)
                .await?
            }
        };
        rows.iter()
            .map(|r| r.try_get::<String, _>("name").map_err(Into::into))
            .collect()
    }
}
