//! Sessions (refresh-token families), refresh tokens and login records.

use mica_core::{AccountId, SessionId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store, StoreError};

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: SessionId,
    pub account_id: AccountId,
    pub created_at: Timestamp,
    pub last_used_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub ip: String,
    pub user_agent: String,
    pub device_model: Option<String>,
    pub os_version: Option<String>,
    pub client: Option<String>,
    /// The OpenID client this session's tokens were given to (ID-16); `None` for Mica's own
    /// apps and browsers.
    pub oidc_client: Option<String>,
    /// What that client may know (its scopes, space-separated).
    pub oidc_scope: Option<String>,
    /// When the person signed in to give it (its ID tokens' `auth_time`).
    pub oidc_auth_time: Option<Timestamp>,
}

/// What makes a session an OpenID client's.
#[derive(Debug, Clone)]
pub struct OidcSession {
    pub client: String,
    pub scope: String,
    pub auth_time: Timestamp,
    /// The portal session that approved it, which must still stand.
    pub approved_by: SessionId,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub account_id: AccountId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub ip: String,
    pub user_agent: String,
    pub device_model: Option<String>,
    pub os_version: Option<String>,
    pub client: Option<String>,
    /// The OpenID client whose session this is. It is opened only while the account's grant
    /// to the client stands, and not for a code that was presented twice.
    pub oidc: Option<OidcSession>,
}

/// One sign-in attempt or success, as the account's owner sees it.
#[derive(Debug, Clone)]
pub struct LoginEventRow {
    pub at: Timestamp,
    pub outcome: String,
    pub ip: String,
    pub user_agent: String,
    pub device_model: Option<String>,
    pub os_version: Option<String>,
    pub client: Option<String>,
    pub session_id: Option<SessionId>,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// The token was current: it is now used, and `new_hash` is the session's current token.
    Rotated(Box<SessionRow>),
    /// The token had already been used: the whole session (token family) is now revoked.
    Reused {
        session: SessionId,
        account: AccountId,
    },
    /// The caller's check refused the presentation; the token is not spent.
    Refused,
    /// Unknown token, or its session is revoked or expired.
    Invalid,
}

pub(crate) fn session_from_row(r: &AnyRow) -> Result<SessionRow> {
    let aid: i64 = r.try_get("account_id")?;
    Ok(SessionRow {
        id: SessionId(r.try_get("id")?),
        account_id: AccountId::from_i64(aid)
            .ok_or_else(|| StoreError::Corrupt(format!("account id {aid}")))?,
        created_at: Timestamp(r.try_get("created_at")?),
        last_used_at: Timestamp(r.try_get("last_used_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp),
        ip: r.try_get("ip")?,
        user_agent: r.try_get("user_agent")?,
        device_model: r.try_get("device_model")?,
        os_version: r.try_get("os_version")?,
        client: r.try_get("client")?,
        oidc_client: r.try_get("oidc_client")?,
        oidc_scope: r.try_get("oidc_scope")?,
        oidc_auth_time: r
            .try_get::<Option<i64>, _>("oidc_auth_time")?
            .map(Timestamp),
    })
}

const SESSION_COLUMNS: &str =
    "s.id, s.account_id, s.created_at, s.last_used_at, s.expires_at, s.revoked_at, \
     s.ip, s.user_agent, s.device_model, s.os_version, s.client, s.oidc_client, s.oidc_scope, \
     s.oidc_auth_time";

impl Store {
    /// Opens a session with its first refresh token and records the successful sign-in,
    /// atomically — only while the account is active: `false` when it is not (suspended or
    /// being deleted meanwhile). The account's row is written first, so a suspension or a
    /// deletion that runs at the same time either comes first (and this opens nothing) or
    /// waits for this commit (and its revocation then sees the new session).
    pub async fn create_session(&self, s: &NewSession, refresh_hash: &[u8]) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let active =
            sqlx::query("UPDATE accounts SET status = status WHERE id = $1 AND status = 'active'")
                .bind(s.account_id.as_i64())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if active == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(o) = &s.oidc {
            // Under the account row's lock, which taking an app's access away also takes
            // first: either that comes first and this opens nothing, or it sees this session.
            let allowed = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM oidc_grants WHERE account_id = $1 AND client_id = $2",
            )
            .bind(s.account_id.as_i64())
            .bind(o.client.clone())
            .fetch_one(&mut *tx)
            .await?
                == 1;
            // The code's row is locked (a write that changes nothing), so a second
            // presentation marking it either came first — and this refuses — or waits for this
            // commit, and then revokes the session it finds.
            let replayed = sqlx::query_scalar::<_, Option<i64>>(
                "UPDATE oidc_codes SET reused_at = reused_at WHERE session_id = $1 RETURNING reused_at",
            )
            .bind(s.id.0.clone())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .any(Option::is_some);
            // The approving portal session, locked likewise: signed out (or out everywhere)
            // before this, nothing opens; after, the sign-out finds this session too.
            let approver_live = sqlx::query(
                "UPDATE sessions SET id = id WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL \
                 AND created_at >= (SELECT sessions_valid_after FROM accounts WHERE id = $2)",
            )
            .bind(o.approved_by.0.clone())
            .bind(s.account_id.as_i64())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !allowed || replayed || !approver_live {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO sessions (id, account_id, created_at, last_used_at, expires_at, ip, user_agent, \
             device_model, os_version, client, oidc_client, oidc_scope, oidc_auth_time) \
             VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(s.id.0.clone())
        .bind(s.account_id.as_i64())
        .bind(s.created_at.millis())
        .bind(s.expires_at.millis())
        .bind(s.ip.clone())
        .bind(s.user_agent.clone())
        .bind(s.device_model.clone())
        .bind(s.os_version.clone())
        .bind(s.client.clone())
        .bind(s.oidc.as_ref().map(|o| o.client.clone()))
        .bind(s.oidc.as_ref().map(|o| o.scope.clone()))
        .bind(s.oidc.as_ref().map(|o| o.auth_time.millis()))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(refresh_hash.to_vec())
        .bind(s.id.0.clone())
        .bind(s.created_at.millis())
        .execute(&mut *tx)
        .await?;
        insert_login_event(
            &mut tx,
            s.account_id,
            &LoginEventRow {
                at: s.created_at,
                outcome: "success".into(),
                ip: s.ip.clone(),
                user_agent: s.user_agent.clone(),
                device_model: s.device_model.clone(),
                os_version: s.os_version.clone(),
                client: s.client.clone(),
                session_id: Some(s.id.clone()),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Rotates a refresh token. Reuse of a spent token revokes the whole family, and two
    /// concurrent presentations of the same token cannot both succeed. `oidc_client` is the
    /// OpenID client presenting it (`None`: one of Mica's own apps): a token of another's
    /// session is not known (and not spent) — a client cannot use, nor burn, another's tokens;
    /// nor one whose grant was taken back. `check` sees the session first: a presentation it
    /// refuses (a client asking for more than it was given) does not spend the token.
    pub async fn rotate_refresh(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        oidc_client: Option<&str>,
        now: Timestamp,
        ip: &str,
        check: impl FnOnce(&SessionRow) -> bool,
    ) -> Result<RefreshOutcome> {
        let mut tx = self.writer.begin().await?;
        let sql = format!(
            "SELECT {SESSION_COLUMNS}, t.used_at AS token_used_at, a.sessions_valid_after \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN accounts a ON a.id = s.account_id \
             WHERE t.token_hash = $1 AND a.status = 'active' AND (s.oidc_client IS NULL OR EXISTS \
               (SELECT 1 FROM oidc_grants g WHERE g.account_id = s.account_id AND g.client_id = s.oidc_client))"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(old_hash.to_vec())
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(RefreshOutcome::Invalid);
        };
        let session = session_from_row(&row)?;
        let used_at: Option<i64> = row.try_get("token_used_at")?;
        let valid_after: i64 = row.try_get("sessions_valid_after")?;
        if session.oidc_client.as_deref() != oidc_client
            || session.revoked_at.is_some()
            || session.expires_at <= now
            || session.created_at.millis() < valid_after
        {
            tx.rollback().await?;
            return Ok(RefreshOutcome::Invalid);
        }
        if used_at.is_none() && !check(&session) {
            tx.rollback().await?;
            return Ok(RefreshOutcome::Refused);
        }
        let won = used_at.is_none()
            && sqlx::query(
                "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
            )
            .bind(old_hash.to_vec())
            .bind(now.millis())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        if !won {
            sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(session.id.0.clone())
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused {
                session: session.id,
                account: session.account_id,
            });
        }
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(new_hash.to_vec())
        .bind(session.id.0.clone())
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        // Spent tokens stay until the session ends, so reuse of any earlier token of the family is
        // recognised, not only of the latest one.
        sqlx::query("UPDATE sessions SET last_used_at = $2, ip = $3 WHERE id = $1")
            .bind(session.id.0.clone())
            .bind(now.millis())
            .bind(ip)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated(Box::new(SessionRow {
            last_used_at: now,
            ip: ip.to_owned(),
            ..session
        })))
    }

    /// Live sessions of an account, newest first.
    pub async fn active_sessions(
        &self,
        account: AccountId,
        now: Timestamp,
    ) -> Result<Vec<SessionRow>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s JOIN accounts a ON a.id = s.account_id \
             WHERE s.account_id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 \
             AND s.created_at >= a.sessions_valid_after ORDER BY s.last_used_at DESC"
        );
        sqlx::query(&sql)
            .bind(account.as_i64())
            .bind(now.millis())
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(session_from_row)
            .collect()
    }

    /// Brings a session's expiry forward to `until` (never later): a browser's session is
    /// shorter than an app's.
    pub async fn limit_session_expiry(
        &self,
        account: AccountId,
        id: &SessionId,
        until: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET expires_at = $3 WHERE id = $1 AND account_id = $2 AND expires_at > $3",
        )
        .bind(id.0.clone())
        .bind(account.as_i64())
        .bind(until.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Revokes one session of an account. `false` when it is not this account's or already revoked.
    pub async fn revoke_session(
        &self,
        account: AccountId,
        id: &SessionId,
        now: Timestamp,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE sessions SET revoked_at = $3 WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL",
        )
        .bind(id.0.clone())
        .bind(account.as_i64())
        .bind(now.millis())
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Signs an account out everywhere; returns the ids of the sessions it ended.
    pub async fn revoke_all_sessions(
        &self,
        account: AccountId,
        now: Timestamp,
    ) -> Result<Vec<SessionId>> {
        let mut tx = self.writer.begin().await?;
        let ids = revoke_all_in(&mut tx, account, now).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Sessions revoked since `since` (signing out everywhere revokes each one): what a node
    /// needs to reject still-unexpired access tokens, at start and every few seconds.
    pub async fn recent_revocations(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(SessionId, Timestamp)>> {
        sqlx::query("SELECT id, revoked_at FROM sessions WHERE revoked_at >= $1")
            .bind(since.millis())
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    SessionId(r.try_get("id")?),
                    Timestamp(r.try_get("revoked_at")?),
                ))
            })
            .collect()
    }

    /// Whether the account has signed in before from this client (same user agent and declared
    /// device model).
    pub async fn seen_device(
        &self,
        account: AccountId,
        user_agent: &str,
        device_model: Option<&str>,
    ) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS x FROM login_events WHERE account_id = $1 AND outcome = 'success' AND user_agent = $2 \
             AND COALESCE(device_model, '') = $3 LIMIT 1",
        )
        .bind(account.as_i64())
        .bind(user_agent)
        .bind(device_model.unwrap_or(""))
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.is_some())
    }

    /// Records a sign-in attempt that did not open a session (wrong password, locked, …).
    pub async fn record_login_event(&self, account: AccountId, e: &LoginEventRow) -> Result<()> {
        let mut conn = self.writer.acquire().await?;
        insert_login_event(&mut conn, account, e).await
    }

    /// An account's login records, newest first.
    pub async fn login_events(&self, account: AccountId, limit: i64) -> Result<Vec<LoginEventRow>> {
        sqlx::query(
            "SELECT at, outcome, ip, user_agent, device_model, os_version, client, session_id FROM login_events \
             WHERE account_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(account.as_i64())
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(LoginEventRow {
                at: Timestamp(r.try_get("at")?),
                outcome: r.try_get("outcome")?,
                ip: r.try_get("ip")?,
                user_agent: r.try_get("user_agent")?,
                device_model: r.try_get("device_model")?,
                os_version: r.try_get("os_version")?,
                client: r.try_get("client")?,
                session_id: r.try_get::<Option<String>, _>("session_id")?.map(SessionId),
            })
        })
        .collect()
    }
}

async fn insert_login_event(
    conn: &mut sqlx::AnyConnection,
    account: AccountId,
    e: &LoginEventRow,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO login_events (account_id, at, outcome, ip, user_agent, device_model, os_version, client, session_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(account.as_i64())
    .bind(e.at.millis())
    .bind(e.outcome.clone())
    .bind(e.ip.clone())
    .bind(e.user_agent.clone())
    .bind(e.device_model.clone())
    .bind(e.os_version.clone())
    .bind(e.client.clone())
    .bind(e.session_id.as_ref().map(|s| s.0.clone()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes every live session of an account inside a transaction; returns their ids.
///
/// The account's row is written (so locked, on PostgreSQL) before its sessions' rows, the
/// order of every transaction that changes both (a password change or reset, a deletion):
/// the other order let two of them wait on each other until PostgreSQL aborted one.
pub(crate) async fn revoke_all_in(
    conn: &mut sqlx::AnyConnection,
    account: AccountId,
    now: Timestamp,
) -> Result<Vec<SessionId>> {
    sqlx::query("UPDATE accounts SET sessions_valid_after = $2 WHERE id = $1")
        .bind(account.as_i64())
        .bind(now.millis())
        .execute(&mut *conn)
        .await?;
    let ids = sqlx::query(
        "UPDATE sessions SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL RETURNING id",
    )
    .bind(account.as_i64())
    .bind(now.millis())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>("id").map(SessionId))
    .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}
