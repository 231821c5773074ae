//! Linked devices, their locations and commands, and activation locks (DV-1 … DV-7).
//!
//! Every change that must be all-or-nothing is one transaction; command state moves by
//! conditional updates (`… WHERE state IN (…)`) whose affected-row count decides the one winner.

use mica_core::{AccountId, Timestamp};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Backend, Result, Store, StoreError};

/// The PostgreSQL channel on which nodes tell each other that a device has a new command.
const WAKEUPS: &str = "mica_devices";

#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub id: String,
    pub account_id: AccountId,
    pub session_id: Option<String>,
    pub name: String,
    pub model: String,
    pub os_version: String,
    pub app_version: String,
    /// Sealed hardware ids.
    pub hardware: Vec<u8>,
    pub find_enabled: bool,
    pub battery: Option<i64>,
    pub last_seen_at: Option<Timestamp>,
    /// Sealed lost-mode settings while the device is in lost mode.
    pub lost_mode: Option<Vec<u8>>,
    pub linked_at: Timestamp,
    pub unlinked_at: Option<Timestamp>,
    pub unlinked_reason: Option<String>,
}

const DEVICE_COLUMNS: &str = "id, account_id, session_id, name, model, os_version, app_version, \
     hardware, find_enabled, battery, last_seen_at, lost_mode, linked_at, unlinked_at, unlinked_reason";

fn account_of(r: &AnyRow) -> Result<AccountId> {
    let account: i64 = r.try_get("account_id")?;
    AccountId::from_i64(account).ok_or_else(|| StoreError::Corrupt(format!("account id {account}")))
}

fn ts(r: &AnyRow, col: &str) -> Result<Option<Timestamp>> {
    Ok(r.try_get::<Option<i64>, _>(col)?.map(Timestamp))
}

fn device_row(r: &AnyRow) -> Result<DeviceRow> {
    Ok(DeviceRow {
        id: r.try_get("id")?,
        account_id: account_of(r)?,
        session_id: r.try_get("session_id")?,
        name: r.try_get("name")?,
        model: r.try_get("model")?,
        os_version: r.try_get("os_version")?,
        app_version: r.try_get("app_version")?,
        hardware: r.try_get("hardware")?,
        find_enabled: r.try_get::<i64, _>("find_enabled")? != 0,
        battery: r.try_get("battery")?,
        last_seen_at: ts(r, "last_seen_at")?,
        lost_mode: r.try_get("lost_mode")?,
        linked_at: Timestamp(r.try_get("linked_at")?),
        unlinked_at: ts(r, "unlinked_at")?,
        unlinked_reason: r.try_get("unlinked_reason")?,
    })
}

/// A device being linked.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub id: String,
    pub account_id: AccountId,
    pub session_id: Option<String>,
    pub name: String,
    pub model: String,
    pub os_version: String,
    pub app_version: String,
    pub hardware: Vec<u8>,
    /// Blind index of the whole set of hardware ids (finds earlier links of the same device).
    pub hardware_bidx: Vec<u8>,
    /// Blind index of each hardware id (the activation-lock keys).
    pub hardware_id_bidxs: Vec<Vec<u8>>,
    pub credential_hash: Vec<u8>,
    pub find_enabled: bool,
    pub now: Timestamp,
}

#[derive(Debug)]
pub enum LinkOutcome {
    /// Linked; the sessions of earlier links of the same device to this account, which the new
    /// link replaced.
    Linked { replaced_sessions: Vec<String> },
    /// Activation lock: the device is bound to another account.
    Locked { owner: AccountId },
}

/// What turning Find Device on or off did.
#[derive(Debug)]
pub enum FindOutcome {
    /// Done; the commands that were waiting for the device and were cancelled (turned off).
    Set { cancelled: Vec<CommandRow> },
    /// Not a linked device of the account.
    NotLinked,
    /// Turning on: another account's link of the same hardware holds its activation lock.
    Locked { owner: AccountId },
}

#[derive(Debug, Clone)]
pub struct CommandRow {
    pub id: String,
    pub account_id: AccountId,
    pub device_id: String,
    pub seq: i64,
    pub kind: String,
    pub payload: Option<Vec<u8>>,
    pub state: String,
    pub reason: Option<String>,
    pub deliveries: i64,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    pub acknowledged_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

const COMMAND_COLUMNS: &str = "id, account_id, device_id, seq, kind, payload, state, reason, \
     deliveries, created_at, expires_at, delivered_at, acknowledged_at, finished_at";

fn command_row(r: &AnyRow) -> Result<CommandRow> {
    Ok(CommandRow {
        id: r.try_get("id")?,
        account_id: account_of(r)?,
        device_id: r.try_get("device_id")?,
        seq: r.try_get("seq")?,
        kind: r.try_get("kind")?,
        payload: r.try_get("payload")?,
        state: r.try_get("state")?,
        reason: r.try_get("reason")?,
        deliveries: r.try_get("deliveries")?,
        created_at: Timestamp(r.try_get("created_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        delivered_at: ts(r, "delivered_at")?,
        acknowledged_at: ts(r, "acknowledged_at")?,
        finished_at: ts(r, "finished_at")?,
    })
}

/// A command being issued.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub id: String,
    pub account_id: AccountId,
    pub device_id: String,
    pub kind: String,
    pub payload: Option<Vec<u8>>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// What an acknowledgement found.
#[derive(Debug)]
pub enum AckOutcome {
    /// This acknowledgement moved the command to `acknowledged`.
    Acknowledged(CommandRow),
    /// The device had acknowledged it already (a repeated acknowledgement).
    Again(CommandRow),
    /// Too late: the command expired first.
    Expired(CommandRow),
    /// The command is already done or failed.
    Finished(CommandRow),
    /// The owner cancelled it first.
    Cancelled(CommandRow),
    NotFound,
}

/// What a device's result report found.
#[derive(Debug)]
pub enum FinishOutcome {
    Finished {
        command: CommandRow,
        /// The device's session, when an erase unlinked it.
        unlinked_session: Option<Option<String>>,
    },
    /// Reported again with the same outcome.
    Again(CommandRow),
    /// Not acknowledged yet, or finished differently.
    WrongState(CommandRow),
    NotFound,
}

/// A reported location, sealed.
#[derive(Debug, Clone)]
pub struct LocationRow {
    pub at: Timestamp,
    pub received_at: Timestamp,
    pub place: Vec<u8>,
}

impl Store {
    /// Tells every node that a device has a new command, or an account's devices a new notice
    /// (PostgreSQL `NOTIFY`, after the command or notice committed; one SQLite node needs
    /// nothing). `payload` is made of URL-safe characters and colons only (a node id, then a
    /// device or notice id); anything else is not sent.
    pub async fn notify_device(&self, payload: &str) -> Result<()> {
        if self.backend != Backend::Postgres
            || payload.len() > 200
            || !payload
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
        {
            return Ok(());
        }
        sqlx::query(&format!("NOTIFY {WAKEUPS}, '{payload}'"))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The wake-ups other nodes send (their payloads), on PostgreSQL; `None` on SQLite. The
    /// listener reconnects by itself after a dropped connection.
    pub async fn device_wakeups(
        &self,
    ) -> Result<Option<std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>>> {
        use futures_util::StreamExt;
        let Some(url) = &self.pg_url else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(WAKEUPS).await?;
        let stream = listener.into_stream().filter_map(|n| async move {
            match n {
                Ok(n) => Some(n.payload().to_owned()),
                Err(e) => {
                    tracing::warn!(error = %e, "device wake-up listener");
                    None
                }
            }
        });
        Ok(Some(Box::pin(stream)))
    }
}

impl Store {
    /// Links a device, unless an activation lock binds its hardware to another (active)
    /// account. Earlier links of the same hardware to this account are replaced (their location
    /// history carried over), and with Find Device on its hardware ids are locked to this
    /// account.
    pub async fn link_device(&self, d: &NewDevice) -> Result<LinkOutcome> {
        let mut tx = self.writer.begin().await?;
        // Locks held by accounts being deleted (or gone) do not bind; a suspended account's do.
        for bidx in &d.hardware_id_bidxs {
            sqlx::query(
                "DELETE FROM activation_locks WHERE hardware_id_bidx = $1 AND account_id NOT IN \
                 (SELECT id FROM accounts WHERE status <> 'deleting')",
            )
            .bind(bidx.clone())
            .execute(&mut *tx)
            .await?;
            let owner: Option<i64> = sqlx::query_scalar(
                "SELECT account_id FROM activation_locks WHERE hardware_id_bidx = $1",
            )
            .bind(bidx.clone())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(owner) = owner {
                if owner != d.account_id.as_i64() {
                    let owner = AccountId::from_i64(owner)
                        .ok_or_else(|| StoreError::Corrupt(format!("account id {owner}")))?;
                    tx.rollback().await?;
                    return Ok(LinkOutcome::Locked { owner });
                }
            }
        }
        let replaced = sqlx::query(
            "SELECT session_id, find_enabled, command_seq, lost_mode FROM devices \
             WHERE account_id = $1 AND hardware_bidx = $2 AND unlinked_at IS NULL",
        )
        .bind(d.account_id.as_i64())
        .bind(d.hardware_bidx.clone())
        .fetch_all(&mut *tx)
        .await?;
        // A relink cannot weaken what protects the device: Find Device (and so its activation
        // lock) stays on if it was — turning it off takes a step-up — lost mode stays until
        // the account password ends it, and the commands still waiting for it carry over,
        // numbered after the old link's.
        let mut find_enabled = d.find_enabled;
        let mut command_seq = 0_i64;
        let mut lost_mode: Option<Vec<u8>> = None;
        let mut replaced_sessions = Vec::with_capacity(replaced.len());
        for r in &replaced {
            find_enabled |= r.try_get::<i64, _>("find_enabled")? != 0;
            command_seq = command_seq.max(r.try_get("command_seq")?);
            lost_mode = lost_mode.or(r.try_get("lost_mode")?);
            if let Some(s) = r.try_get::<Option<String>, _>("session_id")? {
                replaced_sessions.push(s);
            }
        }
        sqlx::query(
            "INSERT INTO devices (id, account_id, session_id, name, model, os_version, app_version, \
             hardware, hardware_bidx, credential_hash, find_enabled, battery, last_seen_at, \
             lost_mode, linked_at, unlinked_at, unlinked_reason, command_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $14, $12, NULL, NULL, $13)",
        )
        .bind(&d.id)
        .bind(d.account_id.as_i64())
        .bind(d.session_id.clone())
        .bind(&d.name)
        .bind(&d.model)
        .bind(&d.os_version)
        .bind(&d.app_version)
        .bind(d.hardware.clone())
        .bind(d.hardware_bidx.clone())
        .bind(d.credential_hash.clone())
        .bind(i64::from(find_enabled))
        .bind(d.now.millis())
        .bind(command_seq)
        .bind(lost_mode)
        .execute(&mut *tx)
        .await?;
        // Earlier links of the same hardware to this account (before a reset, an erase) are
        // the same device: its location history and its waiting commands move to the new
        // link, and the old links go with the rest of their commands and their locks.
        for sql in [
            "UPDATE device_locations SET device_id = $3 WHERE device_id IN \
             (SELECT id FROM devices WHERE account_id = $1 AND hardware_bidx = $2 AND id <> $3)",
            "UPDATE device_commands SET device_id = $3 WHERE state IN ('queued', 'delivered') \
             AND device_id IN (SELECT id FROM devices WHERE account_id = $1 \
             AND hardware_bidx = $2 AND id <> $3 AND unlinked_at IS NULL)",
            "DELETE FROM device_commands WHERE device_id IN \
             (SELECT id FROM devices WHERE account_id = $1 AND hardware_bidx = $2 AND id <> $3)",
            "DELETE FROM activation_locks WHERE account_id = $1 AND device_id IN \
             (SELECT id FROM devices WHERE account_id = $1 AND hardware_bidx = $2 AND id <> $3)",
            "DELETE FROM devices WHERE account_id = $1 AND hardware_bidx = $2 AND id <> $3",
        ] {
            sqlx::query(sql)
                .bind(d.account_id.as_i64())
                .bind(d.hardware_bidx.clone())
                .bind(&d.id)
                .execute(&mut *tx)
                .await?;
        }
        if find_enabled {
            // Another account's link of the same hardware that committed after the check above
            // (PostgreSQL runs links side by side) holds the lock: this link is refused whole.
            if let Some(owner) =
                lock_hardware(&mut tx, d.account_id, &d.id, &d.hardware_id_bidxs, d.now).await?
            {
                tx.rollback().await?;
                return Ok(LinkOutcome::Locked { owner });
            }
        }
        tx.commit().await?;
        Ok(LinkOutcome::Linked { replaced_sessions })
    }

    /// The account (not being deleted; a suspended one binds) an activation lock binds any of
    /// these hardware ids to.
    pub async fn activation_lock(
        &self,
        hardware_id_bidxs: &[Vec<u8>],
    ) -> Result<Option<AccountId>> {
        for bidx in hardware_id_bidxs {
            let owner: Option<i64> = sqlx::query_scalar(
                "SELECT l.account_id FROM activation_locks l JOIN accounts a ON a.id = l.account_id \
                 WHERE l.hardware_id_bidx = $1 AND a.status <> 'deleting'",
            )
            .bind(bidx.clone())
            .fetch_optional(&self.reader)
            .await?;
            if let Some(owner) = owner {
                return AccountId::from_i64(owner)
                    .map(Some)
                    .ok_or_else(|| StoreError::Corrupt(format!("account id {owner}")));
            }
        }
        Ok(None)
    }

    /// The linked device holding this credential.
    pub async fn device_by_credential(&self, credential_hash: &[u8]) -> Result<Option<DeviceRow>> {
        sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE credential_hash = $1 AND unlinked_at IS NULL \
             AND account_id IN (SELECT id FROM accounts WHERE status <> 'deleting')"
        ))
        .bind(credential_hash.to_vec())
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(device_row)
        .transpose()
    }

    /// The account's devices, linked ones first, then by link time.
    pub async fn devices(&self, account: AccountId) -> Result<Vec<DeviceRow>> {
        sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 \
             AND (unlinked_at IS NULL OR unlinked_reason = 'erased') \
             ORDER BY CASE WHEN unlinked_at IS NULL THEN 0 ELSE 1 END, linked_at, name, id"
        ))
        .bind(account.as_i64())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(device_row)
        .collect()
    }

    /// The linked device a session belongs to (the session its linking gave it).
    pub async fn device_of_session(
        &self,
        account: AccountId,
        session: &str,
    ) -> Result<Option<DeviceRow>> {
        sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 AND session_id = $2 \
             AND unlinked_at IS NULL"
        ))
        .bind(account.as_i64())
        .bind(session)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(device_row)
        .transpose()
    }

    pub async fn device(&self, account: AccountId, id: &str) -> Result<Option<DeviceRow>> {
        sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 AND id = $2"
        ))
        .bind(account.as_i64())
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(device_row)
        .transpose()
    }

    pub async fn rename_device(&self, account: AccountId, id: &str, name: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE devices SET name = $3 WHERE account_id = $1 AND id = $2")
            .bind(account.as_i64())
            .bind(id)
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Turns Find Device on (locking the hardware ids to the account) or off (releasing them).
    /// Nothing changes when the device is not a linked device of the account, or when another
    /// account's link of the same hardware holds its activation lock.
    pub async fn set_find_device(
        &self,
        account: AccountId,
        id: &str,
        on: bool,
        hardware_id_bidxs: &[Vec<u8>],
        now: Timestamp,
    ) -> Result<FindOutcome> {
        let mut tx = self.writer.begin().await?;
        let r = sqlx::query(
            "UPDATE devices SET find_enabled = $3 WHERE account_id = $1 AND id = $2 \
             AND unlinked_at IS NULL",
        )
        .bind(account.as_i64())
        .bind(id)
        .bind(i64::from(on))
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(FindOutcome::NotLinked);
        }
        let mut cancelled = Vec::new();
        if on {
            if let Some(owner) = lock_hardware(&mut tx, account, id, hardware_id_bidxs, now).await?
            {
                tx.rollback().await?;
                return Ok(FindOutcome::Locked { owner });
            }
        } else {
            sqlx::query("DELETE FROM activation_locks WHERE account_id = $1 AND device_id = $2")
                .bind(account.as_i64())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            // What was waiting for the device does not run once its owner turned Find Device
            // off (an erase queued while it was lost, say).
            cancelled = sqlx::query(&format!(
                "UPDATE device_commands SET state = 'failed', \
                 reason = 'Find Device was turned off before the device took it', \
                 finished_at = $3 WHERE account_id = $1 AND device_id = $2 \
                 AND state IN ('queued', 'delivered') RETURNING {COMMAND_COLUMNS}"
            ))
            .bind(account.as_i64())
            .bind(id)
            .bind(now.millis())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(command_row)
            .collect::<Result<Vec<_>>>()?;
        }
        tx.commit().await?;
        Ok(FindOutcome::Set { cancelled })
    }

    /// Removes a device with its locations and commands and releases its activation lock.
    /// Returns the device as it was.
    pub async fn remove_device(&self, account: AccountId, id: &str) -> Result<Option<DeviceRow>> {
        let mut tx = self.writer.begin().await?;
        // The device's row is locked first (a write that changes nothing), the order of every
        // transaction that changes a device with its locks or commands: on PostgreSQL the other
        // order could deadlock with turning Find Device on or an erase finishing, and let Find
        // Device on lock the hardware of a device being removed.
        let row = sqlx::query(&format!(
            "UPDATE devices SET id = id WHERE account_id = $1 AND id = $2 RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(account.as_i64())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(device_row)
        .transpose()?;
        if row.is_none() {
            return Ok(None);
        }
        for sql in [
            "DELETE FROM activation_locks WHERE account_id = $1 AND device_id = $2",
            "DELETE FROM device_commands WHERE account_id = $1 AND device_id = $2",
            "DELETE FROM device_locations WHERE account_id = $1 AND device_id = $2",
            "DELETE FROM devices WHERE account_id = $1 AND id = $2",
        ] {
            sqlx::query(sql)
                .bind(account.as_i64())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    /// Records that a device was heard from (at most about every 30 s, to spare the writer,
    /// unless the battery level changed).
    pub async fn touch_device(&self, id: &str, battery: Option<i64>, now: Timestamp) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET last_seen_at = $2, battery = COALESCE($3, battery) WHERE id = $1 \
             AND (last_seen_at IS NULL OR last_seen_at < $4 OR ($3 IS NOT NULL AND \
             (battery IS NULL OR battery <> $3)))",
        )
        .bind(id)
        .bind(now.millis())
        .bind(battery)
        .bind(now.millis() - 30_000)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn set_lost_mode(&self, id: &str, sealed: Option<Vec<u8>>) -> Result<()> {
        // Entering or leaving lost mode: the next place it reports is news to its owner.
        sqlx::query("UPDATE devices SET lost_mode = $2, located_notice_at = NULL WHERE id = $1")
            .bind(id)
            .bind(sealed)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Whether the owner of a device in lost mode is to be told where it was just located:
    /// yes (its name) at most once per `every`, decided by one conditional update, so two
    /// reports at once — on two nodes — tell once.
    pub async fn claim_located_notice(
        &self,
        id: &str,
        now: Timestamp,
        every: std::time::Duration,
    ) -> Result<Option<String>> {
        let due = now.minus(every);
        Ok(sqlx::query_scalar(
            "UPDATE devices SET located_notice_at = $2 WHERE id = $1 AND lost_mode IS NOT NULL \
             AND unlinked_at IS NULL AND (located_notice_at IS NULL OR located_notice_at <= $3) \
             RETURNING name",
        )
        .bind(id)
        .bind(now.millis())
        .bind(due.millis())
        .fetch_optional(&self.writer)
        .await?)
    }

    /// Stores reported locations (all or none) of a linked device.
    pub async fn add_locations(
        &self,
        account: AccountId,
        device: &str,
        rows: &[LocationRow],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for l in rows {
            sqlx::query(
                "INSERT INTO device_locations (device_id, account_id, at, received_at, place) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(device)
            .bind(account.as_i64())
            .bind(l.at.millis())
            .bind(l.received_at.millis())
            .bind(l.place.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Locations reported for a time range `[from, to)`, oldest first, at most `limit`.
    pub async fn locations(
        &self,
        device: &str,
        from: Timestamp,
        to: Timestamp,
        limit: i64,
    ) -> Result<Vec<LocationRow>> {
        // The newest `limit` of the range (where the device is now matters most), oldest first.
        sqlx::query(
            "SELECT at, received_at, place FROM (SELECT at, received_at, place \
             FROM device_locations WHERE device_id = $1 AND at >= $2 AND at < $3 \
             ORDER BY at DESC, received_at DESC LIMIT $4) AS newest ORDER BY at, received_at",
        )
        .bind(device)
        .bind(from.millis())
        .bind(to.millis())
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(location_row)
        .collect()
    }

    /// A device's whole location history a page at a time, oldest first: at most `limit`
    /// after `after` (the last row of the page before; `None` for the first page).
    pub async fn locations_after(
        &self,
        device: &str,
        after: Option<&LocationRow>,
        limit: i64,
    ) -> Result<Vec<LocationRow>> {
        // (at, received_at, place) orders every row: two reports can share both times, but a
        // sealed place is unique (its nonce is random).
        let (at, received_at, place) = match after {
            Some(l) => (l.at.millis(), l.received_at.millis(), l.place.clone()),
            None => (i64::MIN, i64::MIN, Vec::new()),
        };
        sqlx::query(
            "SELECT at, received_at, place FROM device_locations WHERE device_id = $1 \
             AND at >= $2 AND (at, received_at, place) > ($2, $3, $4) \
             ORDER BY at, received_at, place LIMIT $5",
        )
        .bind(device)
        .bind(at)
        .bind(received_at)
        .bind(place)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(location_row)
        .collect()
    }

    /// The newest reported location.
    pub async fn last_location(&self, device: &str) -> Result<Option<LocationRow>> {
        sqlx::query(
            "SELECT at, received_at, place FROM device_locations WHERE device_id = $1 \
             ORDER BY at DESC, received_at DESC LIMIT 1",
        )
        .bind(device)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(location_row)
        .transpose()
    }

    pub async fn delete_locations(&self, account: AccountId, device: &str) -> Result<u64> {
        let r =
            sqlx::query("DELETE FROM device_locations WHERE account_id = $1 AND device_id = $2")
                .bind(account.as_i64())
                .bind(device)
                .execute(&self.writer)
                .await?;
        Ok(r.rows_affected())
    }

    /// Drops locations older than the retention — except an erased device's, which stay for
    /// its owner until they delete them (DV-5: the last places a lost device was seen).
    pub async fn purge_locations(&self, before: Timestamp) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM device_locations WHERE at < $1 AND NOT EXISTS (SELECT 1 FROM devices d \
             WHERE d.id = device_locations.device_id AND d.unlinked_reason = 'erased')",
        )
        .bind(before.millis())
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }

    /// Queues a command for a linked device of the account with Find Device on; `None` otherwise.
    pub async fn create_command(&self, c: &NewCommand) -> Result<Option<CommandRow>> {
        // One statement, so issuing a command is one round trip to the database (it is on the
        // way of every ring). The next `seq` is the device's counter plus one: on PostgreSQL the
        // statement moves the counter, whose row lock orders concurrent issuers; on SQLite the
        // single writer orders them and a trigger (migration 13) moves the counter.
        // `UNIQUE (device_id, seq)` refuses a repeat either way.
        let sql = match self.backend {
            Backend::Postgres => {
                "WITH d AS (UPDATE devices SET command_seq = command_seq + 1 \
                 WHERE account_id = $2 AND id = $3 AND unlinked_at IS NULL AND find_enabled = 1 \
                 RETURNING command_seq) \
                 INSERT INTO device_commands (id, account_id, device_id, seq, kind, payload, state, \
                 reason, deliveries, created_at, expires_at, delivered_at, acknowledged_at, \
                 finished_at) \
                 SELECT $1, $2, $3, d.command_seq, $4, $5, 'queued', NULL, 0, $6, $7, NULL, NULL, \
                 NULL FROM d RETURNING seq"
            }
            Backend::Sqlite => {
                "INSERT INTO device_commands (id, account_id, device_id, seq, kind, payload, state, \
                 reason, deliveries, created_at, expires_at, delivered_at, acknowledged_at, \
                 finished_at) \
                 SELECT $1, $2, $3, d.command_seq + 1, $4, $5, 'queued', NULL, 0, $6, $7, NULL, \
                 NULL, NULL FROM devices d \
                 WHERE d.account_id = $2 AND d.id = $3 AND d.unlinked_at IS NULL \
                 AND d.find_enabled = 1 RETURNING seq"
            }
        };
        let seq: Option<i64> = sqlx::query_scalar(sql)
            .bind(&c.id)
            .bind(c.account_id.as_i64())
            .bind(&c.device_id)
            .bind(&c.kind)
            .bind(c.payload.clone())
            .bind(c.created_at.millis())
            .bind(c.expires_at.millis())
            .fetch_optional(&self.writer)
            .await?;
        let Some(seq) = seq else {
            return Ok(None);
        };
        Ok(Some(CommandRow {
            id: c.id.clone(),
            account_id: c.account_id,
            device_id: c.device_id.clone(),
            seq,
            kind: c.kind.clone(),
            payload: c.payload.clone(),
            state: "queued".into(),
            reason: None,
            deliveries: 0,
            created_at: c.created_at,
            expires_at: c.expires_at,
            delivered_at: None,
            acknowledged_at: None,
            finished_at: None,
        }))
    }

    pub async fn command(&self, account: AccountId, id: &str) -> Result<Option<CommandRow>> {
        sqlx::query(&format!(
            "SELECT {COMMAND_COLUMNS} FROM device_commands WHERE account_id = $1 AND id = $2"
        ))
        .bind(account.as_i64())
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(command_row)
        .transpose()
    }

    /// A device's command history, newest first.
    pub async fn commands(
        &self,
        account: AccountId,
        device: &str,
        limit: i64,
    ) -> Result<Vec<CommandRow>> {
        sqlx::query(&format!(
            "SELECT {COMMAND_COLUMNS} FROM device_commands WHERE account_id = $1 AND device_id = $2 \
             ORDER BY seq DESC LIMIT $3"
        ))
        .bind(account.as_i64())
        .bind(device)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(command_row)
        .collect()
    }

    /// Marks commands whose time ran out before the device acknowledged them as expired;
    /// returns those this call moved (for one device, or all when `device` is `None`).
    pub async fn expire_commands(
        &self,
        device: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<CommandRow>> {
        // Two statements, so each uses its index: one device's open commands
        // (`device_commands_open`), or every open command by its deadline (`device_commands_due`).
        let due: Vec<String> = match device {
            Some(d) => {
                sqlx::query_scalar(
                    "SELECT id FROM device_commands WHERE device_id = $2 \
                     AND state IN ('queued', 'delivered') AND expires_at <= $1 ORDER BY seq LIMIT 1000",
                )
                .bind(now.millis())
                .bind(d)
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                sqlx::query_scalar(
                    "SELECT id FROM device_commands WHERE state IN ('queued', 'delivered') \
                     AND expires_at <= $1 ORDER BY expires_at LIMIT 1000",
                )
                .bind(now.millis())
                .fetch_all(&self.reader)
                .await?
            }
        };
        let mut moved = Vec::new();
        for id in due {
            let row = sqlx::query(&format!(
                "UPDATE device_commands SET state = 'expired', finished_at = $2, \
                 reason = 'the device did not pick it up in time' \
                 WHERE id = $1 AND state IN ('queued', 'delivered') RETURNING {COMMAND_COLUMNS}"
            ))
            .bind(&id)
            .bind(now.millis())
            .fetch_optional(&self.writer)
            .await?;
            if let Some(r) = row {
                moved.push(command_row(&r)?);
            }
        }
        Ok(moved)
    }

    /// The owner cancels a command its device has not acknowledged (nor let expire); `None`
    /// when it is not such a command (any more).
    pub async fn cancel_command(
        &self,
        account: AccountId,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<CommandRow>> {
        sqlx::query(&format!(
            "UPDATE device_commands SET state = 'cancelled', finished_at = $3, \
             reason = 'cancelled by the owner' WHERE account_id = $1 AND id = $2 \
             AND state IN ('queued', 'delivered') AND expires_at > $3 RETURNING {COMMAND_COLUMNS}"
        ))
        .bind(account.as_i64())
        .bind(id)
        .bind(now.millis())
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(command_row)
        .transpose()
    }

    /// Commands a device still has to act on (queued, delivered, or acknowledged but not
    /// finished), oldest first. Expired ones are not included.
    pub async fn open_commands(&self, device: &str, now: Timestamp) -> Result<Vec<CommandRow>> {
        sqlx::query(&format!(
            "SELECT {COMMAND_COLUMNS} FROM device_commands WHERE device_id = $1 AND \
             (state = 'acknowledged' OR (state IN ('queued', 'delivered') AND expires_at > $2)) \
             ORDER BY seq"
        ))
        .bind(device)
        .bind(now.millis())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(command_row)
        .collect()
    }

    /// Records one more delivery of a command to its device; `None` when it is no longer open.
    pub async fn mark_delivered(&self, id: &str, now: Timestamp) -> Result<Option<CommandRow>> {
        sqlx::query(&format!(
            "UPDATE device_commands SET deliveries = deliveries + 1, \
             delivered_at = COALESCE(delivered_at, $2), \
             state = CASE WHEN state = 'queued' THEN 'delivered' ELSE state END \
             WHERE id = $1 AND (state = 'acknowledged' OR (state IN ('queued', 'delivered') \
             AND expires_at > $2)) RETURNING {COMMAND_COLUMNS}"
        ))
        .bind(id)
        .bind(now.millis())
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(command_row)
        .transpose()
    }

    /// A device acknowledges a command: the first acknowledgement before expiry wins.
    pub async fn acknowledge_command(
        &self,
        device: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<AckOutcome> {
        let row = sqlx::query(&format!(
            "UPDATE device_commands SET state = 'acknowledged', acknowledged_at = $3, \
             delivered_at = COALESCE(delivered_at, $3), \
             deliveries = CASE WHEN deliveries = 0 THEN 1 ELSE deliveries END \
             WHERE device_id = $1 AND id = $2 AND state IN ('queued', 'delivered') \
             AND expires_at > $3 AND EXISTS (SELECT 1 FROM devices WHERE id = $1 \
             AND unlinked_at IS NULL) RETURNING {COMMAND_COLUMNS}"
        ))
        .bind(device)
        .bind(id)
        .bind(now.millis())
        .fetch_optional(&self.writer)
        .await?;
        if let Some(r) = row {
            return Ok(AckOutcome::Acknowledged(command_row(&r)?));
        }
        let Some(c) = self.device_command(device, id).await? else {
            return Ok(AckOutcome::NotFound);
        };
        Ok(match c.state.as_str() {
            "acknowledged" => AckOutcome::Again(c),
            "done" | "failed" => AckOutcome::Finished(c),
            "cancelled" => AckOutcome::Cancelled(c),
            // Open and in time: the device was unlinked (its channel may outlive that on
            // another node); it has no command to run.
            _ if c.expires_at > now => AckOutcome::NotFound,
            _ => {
                // Queued or delivered but past its time: expire it now.
                let moved = self.expire_commands(Some(device), now).await?;
                let c = moved.into_iter().find(|m| m.id == c.id).unwrap_or(c);
                AckOutcome::Expired(c)
            }
        })
    }

    async fn device_command(&self, device: &str, id: &str) -> Result<Option<CommandRow>> {
        sqlx::query(&format!(
            "SELECT {COMMAND_COLUMNS} FROM device_commands WHERE device_id = $1 AND id = $2"
        ))
        .bind(device)
        .bind(id)
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(command_row)
        .transpose()
    }

    /// A device reports how an acknowledged command ended. A successful erase unlinks the
    /// device in the same transaction (its credential revoked, Find Device off); the
    /// activation lock stays. A successful lost mode puts the device in lost mode in the same
    /// transaction, with the state `lost_mode` seals from the command.
    pub async fn finish_command(
        &self,
        device: &str,
        id: &str,
        state: &str,
        reason: Option<&str>,
        now: Timestamp,
        lost_mode: impl FnOnce(&CommandRow) -> Result<Vec<u8>> + Send,
    ) -> Result<FinishOutcome> {
        let mut tx = self.writer.begin().await?;
        // A finished erase or lost mode changes the device too: its row is locked before the
        // commands', in the order every such transaction takes (see `remove_device`).
        let kind: Option<String> =
            sqlx::query_scalar("SELECT kind FROM device_commands WHERE device_id = $1 AND id = $2")
                .bind(device)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if matches!(kind.as_deref(), Some("erase" | "lost_mode")) {
            sqlx::query("UPDATE devices SET id = id WHERE id = $1")
                .bind(device)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!(
            "UPDATE device_commands SET state = $3, reason = $4, finished_at = $5 \
             WHERE device_id = $1 AND id = $2 AND state = 'acknowledged' RETURNING {COMMAND_COLUMNS}"
        ))
        .bind(device)
        .bind(id)
        .bind(state)
        .bind(reason)
        .bind(now.millis())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(command_row)
        .transpose()?;
        let Some(command) = row else {
            tx.rollback().await?;
            return Ok(match self.device_command(device, id).await? {
                None => FinishOutcome::NotFound,
                Some(c) if c.state == state => FinishOutcome::Again(c),
                Some(c) => FinishOutcome::WrongState(c),
            });
        };
        // A lost mode done is the device's state in the same transaction: whoever sees the
        // command done sees the device in lost mode.
        if command.kind == "lost_mode" && state == "done" {
            let sealed = lost_mode(&command)?;
            sqlx::query(
                "UPDATE devices SET lost_mode = $2, located_notice_at = NULL WHERE id = $1",
            )
            .bind(device)
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        }
        let mut unlinked_session = None;
        if command.kind == "erase" && state == "done" {
            let session: Option<Option<String>> = sqlx::query_scalar(
                "UPDATE devices SET unlinked_at = $2, unlinked_reason = 'erased', \
                 credential_hash = NULL, find_enabled = 0, lost_mode = NULL \
                 WHERE id = $1 AND unlinked_at IS NULL RETURNING session_id",
            )
            .bind(device)
            .bind(now.millis())
            .fetch_optional(&mut *tx)
            .await?;
            // Commands still waiting for an erased device will never run.
            sqlx::query(
                "UPDATE device_commands SET state = 'failed', finished_at = $2, \
                 reason = 'the device was erased' \
                 WHERE device_id = $1 AND state IN ('queued', 'delivered', 'acknowledged')",
            )
            .bind(device)
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
            unlinked_session = session;
        }
        tx.commit().await?;
        Ok(FinishOutcome::Finished {
            command,
            unlinked_session,
        })
    }
}

fn location_row(r: &AnyRow) -> Result<LocationRow> {
    Ok(LocationRow {
        at: Timestamp(r.try_get("at")?),
        received_at: Timestamp(r.try_get("received_at")?),
        place: r.try_get("place")?,
    })
}

/// Binds hardware ids to the account. An id another account holds (unless it is being
/// deleted) stays that account's, and is returned: the caller rolls back. (A lock of an account being deleted no
/// longer binds and is taken over.) On PostgreSQL the insert waits for a concurrent link of the
/// same hardware and then sees its lock, so of two accounts racing to link one device only
/// the first to commit gets it.
async fn lock_hardware(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    account: AccountId,
    device: &str,
    bidxs: &[Vec<u8>],
    now: Timestamp,
) -> Result<Option<AccountId>> {
    for bidx in bidxs {
        sqlx::query(
            "DELETE FROM activation_locks WHERE hardware_id_bidx = $1 AND account_id <> $2 \
             AND account_id NOT IN (SELECT id FROM accounts WHERE status <> 'deleting')",
        )
        .bind(bidx.clone())
        .bind(account.as_i64())
        .execute(&mut **tx)
        .await?;
        let taken = sqlx::query(
            "INSERT INTO activation_locks (hardware_id_bidx, account_id, device_id, locked_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (hardware_id_bidx) DO UPDATE SET \
             device_id = excluded.device_id, locked_at = excluded.locked_at \
             WHERE activation_locks.account_id = excluded.account_id",
        )
        .bind(bidx.clone())
        .bind(account.as_i64())
        .bind(device)
        .bind(now.millis())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if taken == 0 {
            let owner: i64 = sqlx::query_scalar(
                "SELECT account_id FROM activation_locks WHERE hardware_id_bidx = $1",
            )
            .bind(bidx.clone())
            .fetch_one(&mut **tx)
            .await?;
            return AccountId::from_i64(owner)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("account id {owner}")));
        }
    }
    Ok(None)
}
