//! Device backups (CL-7): a device backs up what makes it its owner's — the installed apps, the
//! home screen, the wallpaper, alarms, notification and system settings, the data of the apps
//! it chooses — as named parts, and a new device restores all of them or some.
//!
//! A part's bytes travel as a file (a resumable upload, `/api/v1/uploads`), so a backup of
//! several gigabytes survives a dropped connection. Backups are incremental: the device first
//! asks which parts the account's backups already hold ([`Cloud::plan_backup`], by content id:
//! BLAKE3 over the part's 4 MiB chunks, see [`mica_blobs::ContentHasher`]), uploads only the
//! others, and then creates the backup naming every part ([`Cloud::create_backup`]), written in
//! one transaction. Each backup is then verified in the background: every chunk of every part
//! is read back from the blob store and hashed, after creation and every
//! `backup_verify_days`; a backup whose bytes are no longer intact says which part is damaged.
//! The protocol is described in docs/design/backups.md.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;

use mica_core::{AccountId, Timestamp};
use mica_store::{BackupOutcome, BackupPartRow, BackupRow, NewBackup, NewBackupPart};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Cloud, CloudError};

/// The kinds of part a backup holds. A restore can take parts by kind ("only the settings").
pub const PART_KINDS: &[&str] = &[
    "apps",
    "home_screen",
    "wallpaper",
    "alarms",
    "notifications",
    "settings",
    "app_data",
    "other",
];

/// The most parts one backup holds.
pub const MAX_PARTS: usize = 10_000;
/// The longest part name, in bytes.
pub const MAX_PART_NAME: usize = 255;
/// Chunks read and hashed at once by a verification.
const CHECKS_IN_FLIGHT: usize = 4;
/// How long a node may take over one verification before another may take it over (a check
/// reads ~1 GB/s from a local disk: six hours cover the largest backups on a slow store).
const CHECK_LEASE: Duration = Duration::from_secs(6 * 3600);

/// A part as the device declares it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartSpec {
    /// A relative path: letters, digits, `.`, `_`, `-`, `+`, `@`, separated by `/`
    /// (`settings/system.json`, `app_data/org.example.notes.tar`).
    pub name: String,
    /// One of apps, home_screen, wallpaper, alarms, notifications, settings, app_data, other.
    pub kind: String,
    /// Bytes.
    pub size: i64,
    /// The content id of the part's bytes (64 hex digits; see docs/design/backups.md).
    pub content_hash: String,
    /// The file uploaded for this part; leave it out for a part the plan said the account
    /// holds already.
    #[serde(default)]
    pub file_id: Option<String>,
}

/// What a device must upload before it creates a backup of these parts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupPlan {
    /// Parts whose content no backup of the account holds: upload each, then name its file.
    pub upload: Vec<String>,
    /// Parts an earlier backup holds: name them without a file.
    pub held: Vec<String>,
    /// Bytes to upload.
    pub upload_bytes: i64,
}

/// The device a backup was made on, as it was then.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupDevice {
    pub id: String,
    pub name: String,
    pub model: String,
}

/// Who makes a backup: the linked device behind the session.
#[derive(Debug, Clone)]
pub struct BackupSource {
    pub device_id: String,
    pub name: String,
    pub model: String,
}

/// A backup as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupView {
    pub id: String,
    pub device: BackupDevice,
    /// RFC 3339.
    pub created_at: String,
    /// Bytes of every part: what a full restore downloads.
    pub size: i64,
    /// Bytes this backup added: its parts that no earlier backup held.
    pub added: i64,
    pub parts: i64,
    /// `unverified` (not read back yet), `verified` (every part read back intact) or
    /// `damaged` (see `damage`).
    pub state: String,
    /// RFC 3339: when its bytes were last read back.
    pub verified_at: Option<String>,
    /// What the last verification found wrong.
    pub damage: Option<String>,
}

/// A part of a stored backup.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupPart {
    pub name: String,
    pub kind: String,
    pub size: i64,
    pub content_hash: String,
    /// Its bytes: `GET /api/v1/files/{file_id}/content` (with Range, to resume).
    pub file_id: String,
}

/// A backup with its parts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupDetail {
    #[serde(flatten)]
    pub backup: BackupView,
    pub part_list: Vec<BackupPart>,
}

impl BackupView {
    fn from_row(r: BackupRow) -> BackupView {
        let state = match (&r.damage, r.verified_at) {
            (Some(_), _) => "damaged",
            (None, Some(_)) => "verified",
            (None, None) => "unverified",
        };
        BackupView {
            id: r.id,
            device: BackupDevice {
                id: r.device_id,
                name: r.device_name,
                model: r.device_model,
            },
            created_at: r.created_at.to_rfc3339(),
            size: r.size,
            added: r.added,
            parts: r.part_count,
            state: state.to_owned(),
            verified_at: r.verified_at.map(Timestamp::to_rfc3339),
            damage: r.damage,
        }
    }
}

impl BackupPart {
    fn from_row(r: BackupPartRow) -> BackupPart {
        BackupPart {
            name: r.name,
            kind: r.kind,
            size: r.size,
            content_hash: r.content_hash,
            file_id: r.file_id,
        }
    }
}

fn invalid(message: String) -> CloudError {
    CloudError::Invalid {
        field: "parts",
        message,
    }
}

/// A part name: a relative path of safe segments, so a restore can write it under a folder.
pub fn valid_part_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PART_NAME
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
        })
}

fn valid_content_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Cloud {
    fn check_parts(&self, parts: &[PartSpec]) -> Result<(), CloudError> {
        if parts.is_empty() {
            return Err(invalid("a backup holds at least one part".into()));
        }
        if parts.len() > MAX_PARTS {
            return Err(invalid(format!(
                "a backup holds at most {MAX_PARTS} parts; put small files together in one"
            )));
        }
        let mut names: HashSet<&str> = HashSet::with_capacity(parts.len());
        for p in parts {
            if !valid_part_name(&p.name) {
                return Err(invalid(format!(
                    "{:?} is not a part name: use a relative path of at most {MAX_PART_NAME} bytes \
                     made of letters, digits and . _ - + @, separated by /",
                    p.name.chars().take(80).collect::<String>()
                )));
            }
            if !names.insert(p.name.as_str()) {
                return Err(invalid(format!("the part {:?} is named twice", p.name)));
            }

            if !PART_KINDS.contains(&p.kind.as_str()) {
                return Err(invalid(format!(
                    "part {:?}: the kind is one of {}",
                    p.name,
                    PART_KINDS.join(", ")
                )));
            }
            if p.size < 0 || p.size > self.inner.cfg.max_file_bytes {
                return Err(invalid(format!(
                    "part {:?}: the size is between 0 and {} bytes",
                    p.name, self.inner.cfg.max_file_bytes
                )));
            }
            if !valid_content_hash(&p.content_hash) {
                return Err(invalid(format!(
                    "part {:?}: content_hash is the part's content id, 64 lowercase hex digits",
                    p.name
                )));
            }
            if let Some(f) = &p.file_id {
                if !mica_core::crypto::is_issued_id(f) {
                    return Err(invalid(format!("part {:?}: no such file", p.name)));
                }
            }
        }
        // A restore writes each part at its name: no part may be another's folder.
        for p in parts {
            for (i, _) in p.name.match_indices('/') {
                let folder = &p.name[..i];
                if names.contains(folder) {
                    return Err(invalid(format!(
                        "the part {folder:?} is also the folder of the part {:?}",
                        p.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Which of these parts the device must upload: those whose content no backup of the
    /// account holds.
    pub async fn plan_backup(
        &self,
        account: AccountId,
        parts: &[PartSpec],
    ) -> Result<BackupPlan, CloudError> {
        self.check_parts(parts)?;
        let contents: Vec<(&str, i64)> = parts
            .iter()
            .map(|p| (p.content_hash.as_str(), p.size))
            .collect();
        let held = self
            .store()
            .backup_contents_held(account, &contents)
            .await?;
        let mut plan = BackupPlan {
            upload: Vec::new(),
            held: Vec::new(),
            upload_bytes: 0,
        };
        let mut counted = HashSet::new();
        for (p, h) in parts.iter().zip(held) {
            if h {
                plan.held.push(p.name.clone());
            } else {
                plan.upload.push(p.name.clone());
                if counted.insert((p.content_hash.as_str(), p.size)) {
                    plan.upload_bytes += p.size;
                }
            }
        }
        Ok(plan)
    }

    /// Creates a backup of `source` from its parts, in one transaction, and deletes the
    /// device's backups past `backups_per_device`. Refused with `backup_parts_missing` when a
    /// part names no file and no backup holds its content (upload it, and name its file).
    pub async fn create_backup(
        &self,
        account: AccountId,
        source: &BackupSource,
        parts: &[PartSpec],
    ) -> Result<BackupDetail, CloudError> {
        self.check_parts(parts)?;
        let now = self.now();
        let id = format!("bk_{}", mica_core::crypto::random_token_string(16));
        let new_parts: Vec<NewBackupPart<'_>> = parts
            .iter()
            .map(|p| NewBackupPart {
                name: &p.name,
                kind: &p.kind,
                size: p.size,
                content_hash: &p.content_hash,
                file_id: p.file_id.as_deref(),
            })
            .collect();
        let b = NewBackup {
            id: &id,
            device_id: &source.device_id,
            device_name: &source.name,
            device_model: &source.model,
            now,
            verify_due: now,
            keep: self.inner.cfg.backups_per_device,
        };
        match self.store().create_backup(account, &b, &new_parts).await? {
            BackupOutcome::Created { backup, removed } => {
                if !removed.is_empty() {
                    tracing::debug!(removed = removed.len(), "older backups of the device removed");
                    self.collect_quietly(account).await;
                }
                self.inner.backups.notify_one();
                let mut part_list: Vec<BackupPart> = self
                    .store()
                    .backup_parts(account, &backup.id)
                    .await?
                    .into_iter()
                    .map(BackupPart::from_row)
                    .collect();
                part_list.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(BackupDetail {
                    backup: BackupView::from_row(backup),
                    part_list,
                })
            }
            BackupOutcome::Missing(names) => Err(CloudError::BackupPartsMissing(names)),
            BackupOutcome::NotUsable(name) => Err(invalid(format!(
                "part {name:?}: file_id is not a file uploaded for this backup with the part's size \
                 and content_hash"
            ))),
        }
    }

    /// The account's backups, from every device, newest first.
    pub async fn backups(&self, account: AccountId) -> Result<Vec<BackupView>, CloudError> {
        Ok(self
            .store()
            .backups(account)
            .await?
            .into_iter()
            .map(BackupView::from_row)
            .collect())
    }

    pub async fn backup(&self, account: AccountId, id: &str) -> Result<BackupDetail, CloudError> {
        if !mica_core::crypto::is_issued_id(id) {
            return Err(CloudError::NotFound);
        }
        let row = self
            .store()
            .backup(account, id)
            .await?
            .ok_or(CloudError::NotFound)?;
        let part_list = self
            .store()
            .backup_parts(account, id)
            .await?
            .into_iter()
            .map(BackupPart::from_row)
            .collect();
        Ok(BackupDetail {
            backup: BackupView::from_row(row),
            part_list,
        })
    }

    /// Deletes a backup; what no other backup holds is freed at once.
    pub async fn delete_backup(&self, account: AccountId, id: &str) -> Result<(), CloudError> {
        if !mica_core::crypto::is_issued_id(id) || !self.store().delete_backup(account, id).await? {
            return Err(CloudError::NotFound);
        }
        self.collect_quietly(account).await;
        Ok(())
    }

    /// Frees at once what a committed change released; a failure is left to the periodic
    /// collection rather than turned into an error for a change that is done.
    async fn collect_quietly(&self, account: AccountId) {
        if let Err(e) = self.collect_account(account).await {
            tracing::warn!(%account, error = %e, "collecting after a backup change failed; maintenance retries");
        }
    }

    /// Wakes the loop that verifies backups ([`Cloud::run_backup_checks`]).
    pub fn backups_waker(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.inner.backups.clone()
    }

    /// Asks for a backup to be read back and checked now (the answer shows it as it stands;
    /// its state changes once the check ran).
    pub async fn verify_backup(
        &self,
        account: AccountId,
        id: &str,
    ) -> Result<BackupView, CloudError> {
        if !mica_core::crypto::is_issued_id(id)
            || !self
                .store()
                .request_backup_check(account, id, self.now())
                .await?
        {
            return Err(CloudError::NotFound);
        }
        self.inner.backups.notify_one();
        let row = self
            .store()
            .backup(account, id)
            .await?
            .ok_or(CloudError::NotFound)?;
        Ok(BackupView::from_row(row))
    }

    /// Verifies the backups whose check is due; returns how many. Run by a loop of its own
    /// (woken by [`Cloud::backups_waker`]), so a long check never holds up photos' previews.
    pub async fn run_backup_checks(&self) -> Result<u64, CloudError> {
        let mut n = 0;
        loop {
            let now = self.now();
            let lease = now.plus(CHECK_LEASE);
            let Some((account, id, full)) = self.store().claim_backup_check(now, lease).await?
            else {
                return Ok(n);
            };
            // A file read back intact within the period needs no reading again, unless the
            // owner asked for this check.
            let fresh_after = (!full).then(|| {
                now.minus(Duration::from_secs(
                    self.inner.cfg.backup_verify_days.max(1) * 86_400,
                ))
            });
            let damage = self.check_backup(account, &id, fresh_after).await?;
            if let Some(d) = &damage {
                tracing::warn!(backup = %id, damage = %d, "a backup is damaged");
            }
            let now = self.now();
            let next = now.plus(Duration::from_secs(
                self.inner.cfg.backup_verify_days.max(1) * 86_400,
            ));
            if !self
                .store()
                .finish_backup_check(account, &id, lease, damage.as_deref(), now, next)
                .await?
            {
                tracing::warn!(backup = %id, "a backup's check outlasted its claim; another node checks it");
            }
            n += 1;
        }
    }

    /// Forgets a chunk found missing or changed, so that the next upload of its content
    /// stores it anew (and mends every file made of it) instead of trusting the bad copy.
    async fn forget_chunk(
        &self,
        account: AccountId,
        c: &mica_store::FileChunk,
    ) -> Result<(), CloudError> {
        if self
            .store()
            .forget_chunk(account, &c.hash, &c.object_key, self.now())
            .await?
        {
            tracing::warn!(%account, chunk = %c.hash, "a damaged chunk is forgotten; it is stored again when its content is uploaded");
        }
        Ok(())
    }

    /// Reads every chunk of every part back and hashes it: `None` when all is intact, else what
    /// is damaged. Every bad chunk is forgotten, not only the first: one upload of the content
    /// then mends the file. A blob store that cannot be read is an error (the check runs
    /// again), not damage.
    async fn check_backup(
        &self,
        account: AccountId,
        id: &str,
        fresh_after: Option<Timestamp>,
    ) -> Result<Option<String>, CloudError> {
        let parts = self.store().backup_parts(account, id).await?;
        let mut checked: HashSet<String> = HashSet::new();
        let mut damage: Vec<String> = Vec::new();
        // Read back recently (by this backup's check or another's) with every chunk still
        // stored: not read again.
        let fresh = match fresh_after {
            Some(after) => self.store().backup_files_fresh(account, id, after).await?,
            None => HashSet::new(),
        };
        let mut intact: Vec<String> = Vec::new();
        for p in parts {
            if !checked.insert(p.file_id.clone()) || fresh.contains(&p.file_id) {
                continue;
            }
            let Some(file) = self.store().file(account, &p.file_id).await? else {
                damage.push(format!("part {:?}: its bytes are gone", p.name));
                continue;
            };
            let chunks = self.store().file_chunks(account, &p.file_id).await?;
            let total: i64 = chunks.iter().map(|c| c.size).sum();
            let mut bad = total != file.size || file.size != p.size;
            let mut ids = Vec::with_capacity(chunks.len());
            // Several chunks in flight: one read from the disk while others are hashed, on
            // every core.
            let blobs = self.blobs().clone();
            let mut read = futures_util::stream::iter(chunks.clone())
                .map(move |c| {
                    let blobs = blobs.clone();
                    async move {
                        let bytes = match blobs.get(&c.object_key).await {
                            Ok(b) => b,
                            Err(mica_blobs::BlobError::Missing(_)) => return Ok(None),
                            Err(e) => return Err(CloudError::from(e)),
                        };
                        tokio::task::spawn_blocking(move || {
                            Some((mica_blobs::chunk_hash(&bytes), bytes.len()))
                        })
                        .await
                        .map_err(|e| CloudError::Internal(format!("hashing a chunk: {e}")))
                    }
                })
                .buffered(CHECKS_IN_FLIGHT);
            for c in &chunks {
                let Some(done) = read.next().await else {
                    break;
                };
                match done? {
                    Some((hash, len))
                        if hash == c.hash && i64::try_from(len).ok() == Some(c.size) =>
                    {
                        ids.push((hash, c.size));
                    }
                    _ => {
                        self.forget_chunk(account, c).await?;
                        bad = true;
                    }
                }
            }
            if bad {
                damage.push(format!(
                    "part {:?}: chunks are missing or their bytes have changed",
                    p.name
                ));
                continue;
            }
            let content = crate::files::content_hash(&ids);
            if content != file.content_hash || content != p.content_hash {
                damage.push(format!(
                    "part {:?}: its content does not match its content id",
                    p.name
                ));
            } else {
                intact.push(p.file_id.clone());
            }
        }
        self.store()
            .files_checked(account, &intact, self.now())
            .await?;
        Ok(match damage.len() {
            0 => None,
            1..=5 => Some(damage.join("; ")),
            n => Some(format!(
                "{}; and {} more parts",
                damage[..5].join("; "),
                n - 5
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_are_safe_relative_paths() {
        for ok in [
            "apps.json",
            "settings/system.json",
            "app_data/org.example.notes+v2@1.tar",
        ] {
            assert!(valid_part_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "./a",
            "a//b",
            "a/",
            "a b",
            "a\\b",
            "é",
            &"x".repeat(MAX_PART_NAME + 1),
        ] {
            assert!(!valid_part_name(bad), "{bad:?}");
        }
        assert!(valid_content_hash(&"a1".repeat(32)));
        assert!(!valid_content_hash(&"A1".repeat(32)));
        assert!(!valid_content_hash("abc"));
    }
}
