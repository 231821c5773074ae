//! Mica as an OpenID Connect provider (ID-16): registered clients, the grants accounts gave
//! them, authorization codes, device codes and the ID-token signing keys.

use mica_core::{AccountId, SessionId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// An application registered with the provider.
#[derive(Debug, Clone)]
pub struct OidcClientRow {
    pub id: String,
    pub name: String,
    /// `None` for a public client (an app on a device, a single-page app), which proves itself
    /// with PKCE instead of a secret.
    pub secret_hash: Option<Vec<u8>>,
    pub redirect_uris: Vec<String>,
    pub created_at: Timestamp,
}

/// What an account allowed a client to know.
#[derive(Debug, Clone)]
pub struct OidcGrantRow {
    pub client_id: String,
    pub client_name: String,
    pub scope: String,
    pub granted_at: Timestamp,
    pub last_used_at: Timestamp,
}

/// An authorization code, as issued.
#[derive(Debug, Clone)]
pub struct OidcCodeRow {
    pub client_id: String,
    pub account_id: AccountId,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub auth_time: Timestamp,
    pub expires_at: Timestamp,
    /// The portal session that approved it.
    pub browser_session: SessionId,
}

/// What presenting an authorization code led to.
#[derive(Debug, Clone)]
pub enum CodeOutcome {
    /// The code was good and is now spent; the session to open is `session`.
    Redeemed(OidcCodeRow),
    /// The code had been spent: the session its first exchange opened is now revoked.
    Reused {
        account: AccountId,
        session: Option<SessionId>,
    },
    /// The presentation failed the caller's check (the reason); the code is not spent.
    Refused(String),
    /// Unknown, expired, or another client's.
    Invalid,
}

/// A device authorization request (RFC 8628).
#[derive(Debug, Clone)]
pub struct DeviceCodeRow {
    pub user_code: String,
    pub client_id: String,
    pub scope: String,
    pub expires_at: Timestamp,
    pub status: String,
    pub account_id: Option<AccountId>,
    pub auth_time: Option<Timestamp>,
    /// The portal session that approved it.
    pub browser_session: Option<SessionId>,
}

/// What a device's poll found.
#[derive(Debug, Clone)]
pub enum DevicePoll {
    /// Not decided yet.
    Pending,
    /// Polled sooner than the interval allows: wait longer.
    SlowDown,
    /// Approved; now spent.
    Approved(DeviceCodeRow),
    /// The person said no.
    Denied,
    /// Expired, or already spent.
    Expired,
    /// Unknown, or another client's.
    Invalid,
}

/// An ID-token signing key (its private half sealed).
#[derive(Debug, Clone)]
pub struct OidcKeyRow {
    pub kid: String,
    pub private_key: Vec<u8>,
    /// The public half, as a JSON Web Key.
    pub public_jwk: String,
    pub created_at: Timestamp,
    pub retired_at: Option<Timestamp>,
}

pub const DEVICE_PENDING: &str = "pending";
pub const DEVICE_APPROVED: &str = "approved";
pub const DEVICE_DENIED: &str = "denied";
pub const DEVICE_USED: &str = "used";

fn account(r: &AnyRow, col: &str) -> Result<AccountId> {
    let id: i64 = r.try_get(col)?;
    AccountId::from_i64(id).ok_or_else(|| StoreError::Corrupt(format!("account id {id}")))
}

fn client_row(r: &AnyRow) -> Result<OidcClientRow> {
    let uris: String = r.try_get("redirect_uris")?;
    Ok(OidcClientRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        secret_hash: r.try_get("secret_hash")?,
        redirect_uris: serde_json::from_str(&uris)
            .map_err(|e| StoreError::Corrupt(format!("redirect uris: {e}")))?,
        created_at: Timestamp(r.try_get("created_at")?),
    })
}

fn device_row(r: &AnyRow) -> Result<DeviceCodeRow> {
    let account_id: Option<i64> = r.try_get("account_id")?;
    Ok(DeviceCodeRow {
        user_code: r.try_get("user_code")?,
        client_id: r.try_get("client_id")?,
        scope: r.try_get("scope")?,
        expires_at: Timestamp(r.try_get("expires_at")?),
        status: r.try_get("status")?,
        account_id: account_id.and_then(AccountId::from_i64),
        auth_time: r.try_get::<Option<i64>, _>("auth_time")?.map(Timestamp),
        browser_session: r
            .try_get::<Option<String>, _>("browser_session")?
            .map(SessionId),
    })
}

const DEVICE_COLUMNS: &str = "user_code, client_id, scope, expires_at, status, account_id, \
     auth_time, next_poll_at, browser_session";

/// Revokes every session of the account given to the client; their ids.
async fn revoke_client_sessions(
    conn: &mut sqlx::AnyConnection,
    account: Option<AccountId>,
    client: &str,
    now: Timestamp,
) -> Result<Vec<SessionId>> {
    let rows = match account {
        Some(a) => {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $3 WHERE account_id = $1 AND oidc_client = $2 \
             AND revoked_at IS NULL RETURNING id",
            )
            .bind(a.as_i64())
            .bind(client)
            .bind(now.millis())
            .fetch_all(&mut *conn)
            .await?
        }
        None => sqlx::query(
            "UPDATE sessions SET revoked_at = $2 WHERE oidc_client = $1 AND revoked_at IS NULL \
             RETURNING id",
        )
        .bind(client)
        .bind(now.millis())
        .fetch_all(&mut *conn)
        .await?,
    };
    rows.iter()
        .map(|r| r.try_get::<String, _>("id").map(SessionId))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Into::into)
}

impl Store {
    /// Registers a client; `false` when its id is taken.
    pub async fn create_oidc_client(&self, c: &OidcClientRow) -> Result<bool> {
        let uris = serde_json::to_string(&c.redirect_uris)
            .map_err(|e| StoreError::Corrupt(format!("redirect uris: {e}")))?;
        let n = sqlx::query(
            "INSERT INTO oidc_clients (id, name, secret_hash, redirect_uris, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(c.id.clone())
        .bind(c.name.clone())
        .bind(c.secret_hash.clone())
        .bind(uris)
        .bind(c.created_at.millis())
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn oidc_client(&self, id: &str) -> Result<Option<OidcClientRow>> {
        sqlx::query(
            "SELECT id, name, secret_hash, redirect_uris, created_at FROM oidc_clients WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(client_row)
        .transpose()
    }

    pub async fn oidc_clients(&self) -> Result<Vec<OidcClientRow>> {
        sqlx::query(
            "SELECT id, name, secret_hash, redirect_uris, created_at FROM oidc_clients ORDER BY created_at, id",
        )
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(client_row)
        .collect()
    }

    /// Removes a client with everything given to it: its grants and codes go with it, and every
    /// session it held is revoked (their ids returned); `None` when there was no such client.
    pub async fn delete_oidc_client(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Vec<SessionId>>> {
        let mut tx = self.writer.begin().await?;
        for table in ["oidc_codes", "oidc_device_codes", "oidc_grants"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE client_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let n = sqlx::query("DELETE FROM oidc_clients WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let revoked = revoke_client_sessions(&mut tx, None, id, now).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    /// What the account allowed the client, if anything.
    pub async fn oidc_grant(&self, account: AccountId, client: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT scope FROM oidc_grants WHERE account_id = $1 AND client_id = $2",
        )
        .bind(account.as_i64())
        .bind(client)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// Records what the account allowed the client: `merge` makes the new set from the one
    /// before (none the first time), under the account row's lock, so two tabs allowing at
    /// once both count. The first time is when it was allowed; `true` then.
    pub async fn widen_oidc_grant(
        &self,
        account: AccountId,
        client: &str,
        now: Timestamp,
        merge: impl FnOnce(Option<&str>) -> String,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        crate::accounts::lock_account_row(&mut tx, account).await?;
        let before: Option<String> = sqlx::query_scalar(
            "SELECT scope FROM oidc_grants WHERE account_id = $1 AND client_id = $2",
        )
        .bind(account.as_i64())
        .bind(client)
        .fetch_optional(&mut *tx)
        .await?;
        let scope = merge(before.as_deref());
        if before.is_some() {
            sqlx::query(
                "UPDATE oidc_grants SET scope = $3 WHERE account_id = $1 AND client_id = $2",
            )
            .bind(account.as_i64())
            .bind(client)
            .bind(scope)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO oidc_grants (account_id, client_id, scope, granted_at, last_used_at) \
                 VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(account.as_i64())
            .bind(client)
            .bind(scope)
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(before.is_none())
    }

    /// Notes that the client used its grant (a code exchanged, a token refreshed).
    pub async fn touch_oidc_grant(
        &self,
        account: AccountId,
        client: &str,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE oidc_grants SET last_used_at = $3 WHERE account_id = $1 AND client_id = $2",
        )
        .bind(account.as_i64())
        .bind(client)
        .bind(now.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The apps the account let in, most recently used first.
    pub async fn oidc_grants(&self, account: AccountId) -> Result<Vec<OidcGrantRow>> {
        sqlx::query(
            "SELECT g.client_id, c.name, g.scope, g.granted_at, g.last_used_at FROM oidc_grants g \
             JOIN oidc_clients c ON c.id = g.client_id WHERE g.account_id = $1 \
             ORDER BY g.last_used_at DESC, g.client_id",
        )
        .bind(account.as_i64())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(OidcGrantRow {
                client_id: r.try_get("client_id")?,
                client_name: r.try_get("name")?,
                scope: r.try_get("scope")?,
                granted_at: Timestamp(r.try_get("granted_at")?),
                last_used_at: Timestamp(r.try_get("last_used_at")?),
            })
        })
        .collect()
    }

    /// Takes back everything the account gave the client, in one transaction: the grant, codes
    /// not yet exchanged, and every session the client holds (their ids returned). `None` when
    /// the account had given it nothing.
    pub async fn revoke_oidc_grant(
        &self,
        account: AccountId,
        client: &str,
        now: Timestamp,
    ) -> Result<Option<Vec<SessionId>>> {
        let mut tx = self.writer.begin().await?;
        // The account row first, as opening the client's session does; then the tables in
        // the order removing a client deletes them (no two transactions wait on each other).
        crate::accounts::lock_account_row(&mut tx, account).await?;
        for table in ["oidc_codes", "oidc_device_codes"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE account_id = $1 AND client_id = $2"
            ))
            .bind(account.as_i64())
            .bind(client)
            .execute(&mut *tx)
            .await?;
        }
        let n = sqlx::query("DELETE FROM oidc_grants WHERE account_id = $1 AND client_id = $2")
            .bind(account.as_i64())
            .bind(client)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let revoked = revoke_client_sessions(&mut tx, Some(account), client, now).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    pub async fn create_oidc_code(&self, code_hash: &[u8], c: &OidcCodeRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO oidc_codes (code_hash, client_id, account_id, redirect_uri, scope, nonce, \
             code_challenge, auth_time, expires_at, browser_session) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(code_hash.to_vec())
        .bind(c.client_id.clone())
        .bind(c.account_id.as_i64())
        .bind(c.redirect_uri.clone())
        .bind(c.scope.clone())
        .bind(c.nonce.clone())
        .bind(c.code_challenge.clone())
        .bind(c.auth_time.millis())
        .bind(c.expires_at.millis())
        .bind(c.browser_session.0.clone())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Spends an authorization code presented by `client`, naming the session its exchange
    /// opens; a code presented twice revokes that session instead (RFC 6749 §4.1.2). `check`
    /// sees the code first (the redirect address, the PKCE verifier): a presentation it
    /// refuses does not spend the code, so a thief without the verifier cannot burn it.
    pub async fn redeem_oidc_code(
        &self,
        code_hash: &[u8],
        client: &str,
        session: &SessionId,
        now: Timestamp,
        check: impl FnOnce(&OidcCodeRow) -> Option<String>,
    ) -> Result<CodeOutcome> {
        let mut tx = self.writer.begin().await?;
        let Some(r) = sqlx::query(
            "SELECT client_id, account_id, redirect_uri, scope, nonce, code_challenge, auth_time, \
             expires_at, browser_session, used_at FROM oidc_codes WHERE code_hash = $1",
        )
        .bind(code_hash.to_vec())
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.rollback().await?;
            return Ok(CodeOutcome::Invalid);
        };
        let row = OidcCodeRow {
            client_id: r.try_get("client_id")?,
            account_id: account(&r, "account_id")?,
            redirect_uri: r.try_get("redirect_uri")?,
            scope: r.try_get("scope")?,
            nonce: r.try_get("nonce")?,
            code_challenge: r.try_get("code_challenge")?,
            auth_time: Timestamp(r.try_get("auth_time")?),
            expires_at: Timestamp(r.try_get("expires_at")?),
            browser_session: SessionId(r.try_get("browser_session")?),
        };
        if row.client_id != client {
            tx.rollback().await?;
            return Ok(CodeOutcome::Invalid);
        }
        // Checked first: only a presentation that passes (the right verifier, for a public
        // client) counts as the code's second use and revokes what the first one opened —
        // someone who merely saw the code in an address cannot sign the person out of the app.
        if let Some(reason) = check(&row) {
            tx.rollback().await?;
            return Ok(CodeOutcome::Refused(reason));
        }
        if r.try_get::<Option<i64>, _>("used_at")?.is_some() {
            return reused(tx, code_hash, row.account_id, now).await;
        }
        if row.expires_at <= now {
            tx.rollback().await?;
            return Ok(CodeOutcome::Invalid);
        }
        let won = sqlx::query(
            "UPDATE oidc_codes SET used_at = $2, session_id = $3 WHERE code_hash = $1 AND used_at IS NULL",
        )
        .bind(code_hash.to_vec())
        .bind(now.millis())
        .bind(session.0.clone())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if won != 1 {
            // Spent by a presentation at the same moment: this one is the second.
            return reused(tx, code_hash, row.account_id, now).await;
        }
        tx.commit().await?;
        Ok(CodeOutcome::Redeemed(row))
    }

    /// Starts a device authorization; `false` when the user code is taken (the caller draws
    /// another).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_device_code(
        &self,
        device_hash: &[u8],
        user_code: &str,
        client: &str,
        scope: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO oidc_device_codes (device_hash, user_code, client_id, scope, created_at, \
             expires_at, next_poll_at, status) VALUES ($1, $2, $3, $4, $5, $6, $5, $7) \
             ON CONFLICT (user_code) DO NOTHING",
        )
        .bind(device_hash.to_vec())
        .bind(user_code)
        .bind(client)
        .bind(scope)
        .bind(now.millis())
        .bind(expires_at.millis())
        .bind(DEVICE_PENDING)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The pending device authorization with this user code, unexpired.
    pub async fn device_code(
        &self,
        user_code: &str,
        now: Timestamp,
    ) -> Result<Option<DeviceCodeRow>> {
        sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM oidc_device_codes WHERE user_code = $1 \
             AND expires_at > $2 AND status = $3"
        ))
        .bind(user_code)
        .bind(now.millis())
        .bind(DEVICE_PENDING)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(device_row)
        .transpose()
    }

    /// Approves (with the account and when it signed in) or denies a pending device
    /// authorization; `false` when it is no longer pending.
    pub async fn decide_device_code(
        &self,
        user_code: &str,
        decision: Option<(AccountId, Timestamp, &SessionId)>,
        now: Timestamp,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE oidc_device_codes SET status = $2, account_id = $3, auth_time = $4, \
             browser_session = $7 WHERE user_code = $1 AND status = $5 AND expires_at > $6",
        )
        .bind(user_code)
        .bind(if decision.is_some() {
            DEVICE_APPROVED
        } else {
            DEVICE_DENIED
        })
        .bind(decision.map(|d| d.0.as_i64()))
        .bind(decision.map(|d| d.1.millis()))
        .bind(DEVICE_PENDING)
        .bind(now.millis())
        .bind(decision.map(|d| d.2 .0.clone()))
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// A device polls for its authorization: spends it when approved, and holds it to one poll
    /// per `interval` (an early poll pushes the next allowed one back by `interval`).
    pub async fn poll_device_code(
        &self,
        device_hash: &[u8],
        client: &str,
        now: Timestamp,
        interval: std::time::Duration,
    ) -> Result<DevicePoll> {
        let mut tx = self.writer.begin().await?;
        let Some(r) = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM oidc_device_codes WHERE device_hash = $1"
        ))
        .bind(device_hash.to_vec())
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.rollback().await?;
            return Ok(DevicePoll::Invalid);
        };
        let row = device_row(&r)?;
        let next_poll_at: i64 = r.try_get("next_poll_at")?;
        if row.client_id != client {
            tx.rollback().await?;
            return Ok(DevicePoll::Invalid);
        }
        if row.expires_at <= now || row.status == DEVICE_USED {
            tx.rollback().await?;
            return Ok(DevicePoll::Expired);
        }
        let step = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let early = now.millis() < next_poll_at;
        let next = if early {
            next_poll_at.saturating_add(step)
        } else {
            now.millis().saturating_add(step)
        };
        let outcome = match row.status.as_str() {
            _ if early => DevicePoll::SlowDown,
            DEVICE_APPROVED => DevicePoll::Approved(row.clone()),
            DEVICE_DENIED => DevicePoll::Denied,
            _ => DevicePoll::Pending,
        };
        let status = match outcome {
            DevicePoll::Approved(_) => DEVICE_USED,
            _ => row.status.as_str(),
        };
        let n = sqlx::query(
            "UPDATE oidc_device_codes SET next_poll_at = $2, status = $3 \
             WHERE device_hash = $1 AND status = $4",
        )
        .bind(device_hash.to_vec())
        .bind(next)
        .bind(status)
        .bind(row.status.clone())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(if n == 1 { outcome } else { DevicePoll::Expired })
    }

    /// Forgets device authorizations and unused codes that expired before `cutoff`, and
    /// used codes spent before `used_cutoff` — kept until then so a code presented again
    /// still finds, and revokes, the session its first use opened.
    pub async fn purge_oidc_codes(&self, cutoff: Timestamp, used_cutoff: Timestamp) -> Result<u64> {
        let mut n = sqlx::query(
            "DELETE FROM oidc_codes WHERE expires_at < $1 AND (used_at IS NULL OR used_at < $2)",
        )
        .bind(cutoff.millis())
        .bind(used_cutoff.millis())
        .execute(&self.writer)
        .await?
        .rows_affected();
        n += sqlx::query("DELETE FROM oidc_device_codes WHERE expires_at < $1")
            .bind(cutoff.millis())
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(n)
    }

    /// The signing keys, newest first.
    pub async fn oidc_keys(&self) -> Result<Vec<OidcKeyRow>> {
        sqlx::query(
            "SELECT kid, private_key, public_jwk, created_at, retired_at FROM oidc_keys \
             ORDER BY created_at DESC, kid",
        )
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(OidcKeyRow {
                kid: r.try_get("kid")?,
                private_key: r.try_get("private_key")?,
                public_jwk: r.try_get("public_jwk")?,
                created_at: Timestamp(r.try_get("created_at")?),
                retired_at: r.try_get::<Option<i64>, _>("retired_at")?.map(Timestamp),
            })
        })
        .collect()
    }

    /// Puts a new signing key in use, retiring `current` — unless another node retired it or
    /// put a key in first (then `false`, and the caller reads the keys again). The retirement
    /// is conditional on the key still being current, and a unique index admits one current
    /// key, so two nodes at once cannot both succeed.
    pub async fn add_oidc_key(&self, key: &OidcKeyRow, current: Option<&str>) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        if let Some(kid) = current {
            let n = sqlx::query(
                "UPDATE oidc_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL",
            )
            .bind(key.created_at.millis())
            .bind(kid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        let n = sqlx::query(
            "INSERT INTO oidc_keys (kid, private_key, public_jwk, created_at, retired_at) \
             VALUES ($1, $2, $3, $4, NULL) ON CONFLICT DO NOTHING",
        )
        .bind(key.kid.clone())
        .bind(key.private_key.clone())
        .bind(key.public_jwk.clone())
        .bind(key.created_at.millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes keys retired before `cutoff` (every token they signed has expired).
    pub async fn delete_retired_oidc_keys(&self, cutoff: Timestamp) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM oidc_keys WHERE retired_at IS NOT NULL AND retired_at < $1")
                .bind(cutoff.millis())
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }

    /// The session of an OpenID client's access token, if it still stands: its client and
    /// scope.
    pub async fn oidc_session(
        &self,
        account: AccountId,
        session: &SessionId,
        now: Timestamp,
    ) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT s.oidc_client, s.oidc_scope FROM sessions s JOIN accounts a ON a.id = s.account_id \
             WHERE s.id = $1 AND s.account_id = $2 AND s.revoked_at IS NULL AND s.expires_at > $3 \
             AND s.created_at >= a.sessions_valid_after AND a.status = 'active' \
             AND EXISTS (SELECT 1 FROM oidc_grants g WHERE g.account_id = s.account_id \
               AND g.client_id = s.oidc_client)",
        )
        .bind(session.0.clone())
        .bind(account.as_i64())
        .bind(now.millis())
        .fetch_optional(&self.reader)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let client: Option<String> = r.try_get("oidc_client")?;
        let scope: Option<String> = r.try_get("oidc_scope")?;
        Ok(client.zip(scope))
    }

    /// When a live session of the account began (a browser's sign-in: its `auth_time`).
    pub async fn session_started(
        &self,
        account: AccountId,
        session: &SessionId,
    ) -> Result<Option<Timestamp>> {
        Ok(sqlx::query_scalar(
            "SELECT created_at FROM sessions WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL",
        )
        .bind(session.0.clone())
        .bind(account.as_i64())
        .fetch_optional(&self.reader)
        .await?
        .map(Timestamp))
    }

    /// Revokes the session a refresh token of `client` belongs to (RFC 7009); its id.
    pub async fn revoke_by_refresh(
        &self,
        token_hash: &[u8],
        client: &str,
        now: Timestamp,
    ) -> Result<Option<(AccountId, SessionId)>> {
        let row = sqlx::query(
            "UPDATE sessions SET revoked_at = $3 WHERE oidc_client = $2 AND revoked_at IS NULL \
             AND id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1) \
             RETURNING id, account_id",
        )
        .bind(token_hash.to_vec())
        .bind(client)
        .bind(now.millis())
        .fetch_optional(&self.writer)
        .await?;
        row.map(|r| Ok((account(&r, "account_id")?, SessionId(r.try_get("id")?))))
            .transpose()
    }
}

/// A code presented again: its exchange's session is revoked, and marked so it cannot be
/// opened later either (the first exchange may not have opened it yet).
async fn reused(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    code_hash: &[u8],
    account: AccountId,
    now: Timestamp,
) -> Result<CodeOutcome> {
    let session: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE oidc_codes SET reused_at = $2 WHERE code_hash = $1 RETURNING session_id",
    )
    .bind(code_hash.to_vec())
    .bind(now.millis())
    .fetch_optional(&mut *tx)
    .await?;
    let session = session.flatten();
    if let Some(id) = &session {
        sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id.clone())
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(CodeOutcome::Reused {
        account,
        session: session.map(SessionId),
    })
}
