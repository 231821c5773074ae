//! Linking a device by code (the device authorization grant of RFC 8628, for Mica's devices):
//! pending requests, the owner's decision, and the device's polls.
//!
//! A request is decided once (`… WHERE decided_at IS NULL`) and taken once (`DELETE … WHERE
//! approved = 1`, whose affected-row count decides the one poll that links the device).

use mica_core::{AccountId, SessionId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// A device asking to be linked.
#[derive(Debug, Clone)]
pub struct NewLinkRequest {
    pub id: String,
    pub device_code_hash: Vec<u8>,
    pub user_code_bidx: Vec<u8>,
    /// Sealed: what the device declared.
    pub request: Vec<u8>,
    pub ip: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct LinkRequestRow {
    pub id: String,
    pub request: Vec<u8>,
    pub ip: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// The account that decided, and its session.
    pub account_id: Option<AccountId>,
    pub session_id: Option<SessionId>,
    /// `Some(true)` approved, `Some(false)` denied, `None` undecided.
    pub approved: Option<bool>,
}

/// What a device's poll finds.
#[derive(Debug)]
pub enum LinkPoll {
    /// Nobody has decided yet.
    Pending,
    /// Polled again sooner than the interval allows.
    TooSoon,
    /// The owner approved: the request is taken (this poll is the only one that sees it).
    Approved(LinkRequestRow),
    /// The owner declined: the request is gone.
    Denied,
    /// Unknown, expired, or already taken.
    Gone,
}

const COLUMNS: &str = "id, request, ip, created_at, expires_at, account_id, session_id, approved";

fn row(r: &AnyRow) -> Result<LinkRequestRow> {
    let account = match r.try_get::<Option<i64>, _>("account_id")? {
        Some(a) => Some(
            AccountId::from_i64(a).ok_or_else(|| StoreError::Corrupt(format!("account id {a}")))?,
        ),
        None => None,
    };
    Ok(LinkRequestRow {
        id: r.try_get("id")?,
        request: r.try_get("request")?,
        ip: r.try_get("ip")?,
        created_at: Timestamp(r.try_get("created_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        account_id: account,
        session_id: r.try_get::<Option<String>, _>("session_id")?.map(SessionId),
        approved: r.try_get::<Option<i64>, _>("approved")?.map(|a| a != 0),
    })
}

impl Store {
    /// Records a request. `Err(Conflict)` when a live request already has this user code (the
    /// caller draws another); expired requests are cleared first, so theirs are free again.
    pub async fn create_link_request(&self, r: &NewLinkRequest) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM device_link_requests WHERE expires_at <= $1")
            .bind(r.created_at.millis())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO device_link_requests (id, device_code_hash, user_code_bidx, request, ip, \
             created_at, expires_at, polled_at, account_id, session_id, decided_at, approved) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, NULL, NULL)",
        )
        .bind(&r.id)
        .bind(r.device_code_hash.clone())
        .bind(r.user_code_bidx.clone())
        .bind(r.request.clone())
        .bind(&r.ip)
        .bind(r.created_at.millis())
        .bind(r.expires_at.millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The undecided, unexpired request with this user code.
    pub async fn pending_link_request(
        &self,
        user_code_bidx: &[u8],
        now: Timestamp,
    ) -> Result<Option<LinkRequestRow>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM device_link_requests \
             WHERE user_code_bidx = $1 AND expires_at > $2 AND decided_at IS NULL"
        ))
        .bind(user_code_bidx.to_vec())
        .bind(now.millis())
        .fetch_optional(&self.reader)
        .await?
        .map(|r| row(&r))
        .transpose()
    }

    /// Records the owner's decision on a pending request; `false` when it was decided (or
    /// expired) in the meantime.
    pub async fn decide_link_request(
        &self,
        id: &str,
        account: AccountId,
        session: &SessionId,
        approved: bool,
        now: Timestamp,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE device_link_requests SET account_id = $2, session_id = $3, decided_at = $4, \
             approved = $5 WHERE id = $1 AND decided_at IS NULL AND expires_at > $4",
        )
        .bind(id)
        .bind(account.as_i64())
        .bind(session.0.clone())
        .bind(now.millis())
        .bind(i64::from(approved))
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A device polls with its device code. Polls closer together than `interval_ms` are
    /// `TooSoon`; an approved request is taken by exactly one poll.
    pub async fn poll_link_request(
        &self,
        device_code_hash: &[u8],
        now: Timestamp,
        interval_ms: i64,
    ) -> Result<LinkPoll> {
        // Unknown and expired codes are answered from a reader: a stream of forged polls does
        // not queue on the writer.
        let live = sqlx::query(
            "SELECT 1 AS x FROM device_link_requests WHERE device_code_hash = $1 AND expires_at > $2",
        )
        .bind(device_code_hash.to_vec())
        .bind(now.millis())
        .fetch_optional(&self.reader)
        .await?;
        if live.is_none() {
            return Ok(LinkPoll::Gone);
        }
        let mut tx = self.writer.begin().await?;
        let Some(r) = sqlx::query(&format!(
            "SELECT {COLUMNS}, polled_at FROM device_link_requests WHERE device_code_hash = $1"
        ))
        .bind(device_code_hash.to_vec())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(LinkPoll::Gone);
        };
        let found = row(&r)?;
        let polled_at: Option<i64> = r.try_get("polled_at")?;
        if found.expires_at <= now {
            return Ok(LinkPoll::Gone);
        }
        let outcome = match found.approved {
            Some(approved) => {
                let taken = sqlx::query("DELETE FROM device_link_requests WHERE id = $1")
                    .bind(&found.id)
                    .execute(&mut *tx)
                    .await?;
                match (approved, taken.rows_affected()) {
                    (_, 0) => LinkPoll::Gone,
                    (true, _) => LinkPoll::Approved(found),
                    (false, _) => LinkPoll::Denied,
                }
            }
            None => {
                sqlx::query("UPDATE device_link_requests SET polled_at = $2 WHERE id = $1")
                    .bind(&found.id)
                    .bind(now.millis())
                    .execute(&mut *tx)
                    .await?;
                match polled_at {
                    Some(last) if now.millis() < last.saturating_add(interval_ms) => {
                        LinkPoll::TooSoon
                    }
                    _ => LinkPoll::Pending,
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Drops requests that expired before `now`.
    pub async fn purge_link_requests(&self, now: Timestamp) -> Result<u64> {
        let r = sqlx::query("DELETE FROM device_link_requests WHERE expires_at <= $1")
            .bind(now.millis())
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected())
    }
}
