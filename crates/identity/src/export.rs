//! Data export (ID-14): one zip archive with everything the account holds, built in the
//! background and downloadable by its owner until it expires.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use mica_core::archive::ArchiveWriter;
use mica_core::crypto::random_token_string;
use mica_store::{ExportRow, JobRow};
use serde_json::json;

use crate::{ClientInfo, Identity, IdentityError, Principal};

/// How long a finished archive can be downloaded.
pub const EXPORT_TTL: Duration = Duration::from_secs(7 * 86_400);

const README: &str = "This archive holds everything your Mica account stores about you.\n\n\
account.json          your account number, email, phone and dates\n\
profile.json          nickname, gender, region, language\n\
avatar.png            your avatar, if you set one\n\
login-records.json    every sign-in and failed attempt, with address and device\n\
sessions.json         every session (signed-in device), current and ended\n\
security-events.json  changes to your account's security, with when and from where\n\
two-step.json         which second factors and passkeys are set up (never the secrets themselves)\n\
recovery.json         your recovery email and phone, and your security questions (not the answers)\n\
app-passwords.json    the app passwords you made, with when each was last used (not the passwords)\n\
apps.json             the apps you signed in to with your account, and what each may see\n\
contacts/             your address books, one vCard file each (open with any contacts app)\n\
calendar/             your calendars, one folder each with an iCalendar (.ics) file per event\n\
<category>/           notes, messages, call history, bookmarks, browser history, Wi-Fi networks,\n\
                      app settings, gallery and recording records, as JSON\n\n\
files/                the original files of your drive, gallery and recordings, by category\n\
                      and collection (drive files keep their folders)\n\
backups.json          your devices' backups: when, from which device, and their parts\n\
backups/parts/        the bytes of those parts, once each, named by content id\n";

/// Where the parts of an account write their files into its archive. Entries stream to the
/// zip, written on a blocking thread, a piece at a time through a short queue: an archive of
/// any size takes a few pieces of memory, not the account's size.
pub struct ExportSink {
    tx: tokio::sync::mpsc::Sender<Piece>,
}

/// A piece of the archive on its way to the zip writer.
enum Piece {
    /// A new entry: its path in the zip, and whether to compress it (originals of photos and
    /// videos are compressed already).
    Start { name: String, compress: bool },
    /// More bytes of the entry started last.
    Data(Vec<u8>),
}

impl mica_core::archive::ArchiveWriter for ExportSink {
    async fn start(&self, path: String, compress: bool) -> Result<(), String> {
        self.send(Piece::Start {
            name: path,
            compress,
        })
        .await
    }

    async fn data(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.send(Piece::Data(bytes)).await
    }
}

impl ExportSink {
    async fn send(&self, piece: Piece) -> Result<(), String> {
        self.tx
            .send(piece)
            .await
            .map_err(|_| "the archive's writer stopped".to_owned())
    }
}

/// A future an [`AccountArea`] returns.
pub type AreaFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

/// Another part of Mica that holds account data (the cloud and its files) takes part in the
/// export and in account deletion through this, without the identity crate knowing it.
pub trait AccountArea: Send + Sync {
    /// Writes its files into the account's export archive.
    fn export_files<'a>(
        &'a self,
        account: mica_core::AccountId,
        sink: &'a ExportSink,
    ) -> AreaFuture<'a, ()>;

    /// Deletes what it keeps outside the database (blob-store objects) for a deleted account;
    /// runs before the account's rows go, and again if the deletion job is retried.
    fn forget_account(&self, account: mica_core::AccountId) -> AreaFuture<'_, ()>;
}

impl Identity {
    /// Adds an area's data to every export and account deletion from now on.
    pub fn add_area(&self, source: std::sync::Arc<dyn AccountArea>) {
        if let Ok(mut v) = self.inner.areas.write() {
            v.push(source);
        }
    }

    fn export_path(&self, id: &str) -> PathBuf {
        self.inner.exports_dir.join(format!("{id}.zip"))
    }

    /// Asks for an archive of the account's data (step-up required: it is everything the
    /// account holds, and a session alone — on a stolen phone, say — must not take it away;
    /// the owner is told); it is built in the background. While one is being built, asking
    /// again returns it.
    pub async fn request_export(
        &self,
        p: &Principal,
        client: &ClientInfo,
    ) -> Result<ExportRow, IdentityError> {
        self.require_step_up(p).await?;
        if let Some(pending) = self
            .store()
            .pending_exports(p.account)
            .await?
            .into_iter()
            .next()
        {
            return Ok(pending);
        }
        let now = self.now();
        let id = format!("ex_{}", random_token_string(18));
        self.store()
            .insert_export(&id, p.account, now, now.plus(EXPORT_TTL))
            .await?;
        self.event(
            p.account,
            "export_requested",
            client,
            Some(&p.session),
            Some(id.clone()),
        )
        .await?;
        self.inner.jobs.notify_one();
        self.store()
            .exports(p.account)
            .await?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or(IdentityError::NotFound)
    }

    pub async fn exports(&self, p: &Principal) -> Result<Vec<ExportRow>, IdentityError> {
        let now = self.now();
        Ok(self
            .store()
            .exports(p.account)
            .await?
            .into_iter()
            .filter(|e| e.expires_at > now)
            .collect())
    }

    /// The file of a ready, unexpired archive of this account.
    pub async fn export_file(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<(PathBuf, ExportRow), IdentityError> {
        let now = self.now();
        let e = self
            .store()
            .exports(p.account)
            .await?
            .into_iter()
            .find(|e| e.id == id && e.status == "ready" && e.expires_at > now)
            .ok_or(IdentityError::NotFound)?;
        Ok((self.export_path(&e.id), e))
    }

    /// Builds every pending archive of the job's account.
    pub(crate) async fn run_export_job(&self, job: &JobRow) -> Result<(), IdentityError> {
        let Some(account) = job.account_id else {
            return Ok(());
        };
        // Until none is pending: one asked for while the last was being built relies on this
        // job, which its request found queued.
        for _ in 0..10 {
            for e in self.store().pending_exports(account).await? {
                let size = self.build_archive(account, &e.id).await?;
                let now = self.now();
                self.store()
                    .export_ready(&e.id, size, now, now.plus(EXPORT_TTL))
                    .await?;
                // One archive per account: the new one replaces those before it, so asking
                // again and again cannot fill the disk with copies of one account.
                for old in self.store().exports(account).await? {
                    if old.id != e.id && old.status == "ready" {
                        remove_if_present(&self.export_path(&old.id))?;
                        self.store().delete_export(&old.id).await?;
                    }
                }
                tracing::info!(%account, export = %e.id, size, "export ready");
            }
            if self.store().finish_export_job(job.id).await? {
                return Ok(());
            }
        }
        Err(IdentityError::Internal(
            "exports kept being asked for while this job built them; retrying later".into(),
        ))
    }

    /// Writes the account's archive: its entries stream to a temporary file of its own, which
    /// is synced and renamed into place only when every part was written — a crash or a
    /// failure never leaves a partial archive under the name a download serves, and the
    /// temporary goes on failure.
    async fn build_archive(
        &self,
        account: mica_core::AccountId,
        id: &str,
    ) -> Result<i64, IdentityError> {
        let io = |e: std::io::Error| IdentityError::Internal(format!("writing export: {e}"));
        let dir = self.inner.exports_dir.clone();
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join(format!("{id}.{}.zip.tmp", random_token_string(6)));
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let writer = {
            let tmp = tmp.clone();
            tokio::task::spawn_blocking(move || write_zip(&tmp, rx))
        };
        let sink = ExportSink { tx };
        let written = self.export_contents(account, &sink).await;
        drop(sink);
        let zipped = writer
            .await
            .map_err(|err| IdentityError::Internal(format!("export task: {err}")));
        let size = match (written, zipped) {
            (Ok(()), Ok(Ok(size))) => size,
            // The writer's own error first: the parts only see that it stopped.
            (_, Err(e)) | (_, Ok(Err(e))) | (Err(e), _) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&tmp, self.export_path(id)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(size)
    }

    async fn export_contents(
        &self,
        account: mica_core::AccountId,
        sink: &ExportSink,
    ) -> Result<(), IdentityError> {
        let row = self
            .store()
            .account(mica_store::LookupBy::Id(account))
            .await?
            .ok_or(IdentityError::NotFound)?;
        let v = self.view(&row)?;
        let profile = self.store().profile(account).await?;
        let logins = self.store().login_events(account, 100_000).await?;
        let sessions = self.store().all_sessions(account).await?;
        let apps = self.store().oidc_grants(account).await?;
        let events = self.store().security_events(account, 100_000).await?;
        let totp = self
            .store()
            .totp_factor(account)
            .await?
            .is_some_and(|f| f.confirmed_at.is_some());
        let codes_left = self.store().recovery_codes_left(account).await?;
        let mut passkeys = Vec::new();
        for pk in self.store().passkeys(account).await? {
            passkeys.push(json!({
                "name": self.keys().open("passkey_name", &pk.name_enc)?,
                "created_at": pk.created_at.to_rfc3339(),
                "last_used_at": pk.last_used_at.map(|t| t.to_rfc3339()),
            }));
        }
        let ts = |t: mica_core::Timestamp| t.to_rfc3339();
        let pretty = |v: serde_json::Value| serde_json::to_vec_pretty(&v).unwrap_or_default();
        let mut files = vec![
            ("README.txt".to_owned(), README.as_bytes().to_vec()),
            (
                "account.json".into(),
                pretty(json!({
                    "account_id": v.id.to_string(),
                    "email": v.email.as_ref().map(|e| e.as_str()),
                    "phone": v.phone.as_ref().map(|p| p.as_str()),
                    "created_at": ts(v.created_at),
                    "password_changed_at": ts(v.password_changed_at),
                })),
            ),
            (
                "profile.json".into(),
                pretty(json!({
                    "nickname": profile.nickname,
                    "gender": profile.gender,
                    "country": profile.country,
                    "locale": profile.locale,
                })),
            ),
            (
                "login-records.json".into(),
                pretty(json!(logins
                    .iter()
                    .map(|l| json!({
                        "at": ts(l.at), "outcome": l.outcome, "ip": l.ip, "user_agent": l.user_agent,
                        "device_model": l.device_model, "os_version": l.os_version, "client": l.client,
                    }))
                    .collect::<Vec<_>>())),
            ),
            (
                "sessions.json".into(),
                pretty(json!(sessions
                    .iter()
                    .map(|s| json!({
                        "id": s.id.0, "created_at": ts(s.created_at), "last_used_at": ts(s.last_used_at),
                        "revoked_at": s.revoked_at.map(ts), "ip": s.ip, "user_agent": s.user_agent,
                        "device_model": s.device_model, "os_version": s.os_version, "client": s.client,
                        "app": s.oidc_client, "app_scope": s.oidc_scope,
                    }))
                    .collect::<Vec<_>>())),
            ),
            (
                "apps.json".into(),
                pretty(json!(apps
                    .iter()
                    .map(|g| json!({
                        "app": g.client_name, "client_id": g.client_id, "scope": g.scope,
                        "allowed_at": ts(g.granted_at), "last_used_at": ts(g.last_used_at),
                    }))
                    .collect::<Vec<_>>())),
            ),
            (
                "security-events.json".into(),
                pretty(json!(events
                    .iter()
                    .map(|e| json!({
                        "at": ts(e.at), "kind": e.kind, "ip": e.ip, "user_agent": e.user_agent, "detail": e.detail,
                    }))
                    .collect::<Vec<_>>())),
            ),
            ("two-step.json".into(), pretty(json!({ "totp_enabled": totp, "recovery_codes_left": codes_left, "passkeys": passkeys }))),
        ];
        // Recovery factors in full (they are the account's own), and the questions — never
        // the answers, which are kept only as hashes.
        let mut recovery = json!({ "recovery_email": null, "recovery_phone": null });
        for f in self.store().recovery_factors(account).await? {
            let field = if f.kind == "email" {
                "recovery_email"
            } else {
                "recovery_phone"
            };
            recovery[field] = json!({
                "address": self.keys().open(field, &f.value_enc)?,
                "verified_at": ts(f.verified_at),
            });
        }
        recovery["security_questions"] = json!(self
            .store()
            .security_questions(account)
            .await?
            .into_iter()
            .map(|(q, _)| q)
            .collect::<Vec<_>>());
        files.push(("recovery.json".into(), pretty(recovery)));
        let app_passwords: Vec<_> = self
            .store()
            .app_passwords(account)
            .await?
            .into_iter()
            .map(|a| {
                json!({ "name": a.name, "created_at": ts(a.created_at),
                        "last_used_at": a.last_used_at.map(ts) })
            })
            .collect();
        files.push(("app-passwords.json".into(), pretty(json!(app_passwords))));
        if let Some(png) = self.store().avatar(account).await? {
            files.push(("avatar.png".into(), png));
        }
        for (name, bytes) in files {
            sink.file(name, bytes)
                .await
                .map_err(IdentityError::Internal)?;
        }
        let sources: Vec<_> = self
            .inner
            .areas
            .read()
            .map(|v| v.clone())
            .unwrap_or_default();
        for source in sources {
            source
                .export_files(account, sink)
                .await
                .map_err(IdentityError::Internal)?;
        }
        Ok(())
    }

    /// Removes the archive files of an account (before its rows are deleted). Idempotent.
    pub(crate) async fn delete_export_files(
        &self,
        account: mica_core::AccountId,
    ) -> Result<(), IdentityError> {
        for e in self.store().exports(account).await? {
            remove_if_present(&self.export_path(&e.id))?;
            remove_temporaries(&self.inner.exports_dir, Duration::ZERO, |name| {
                name.starts_with(&format!("{}.", e.id))
            });
        }
        Ok(())
    }

    /// Deletes archives whose download window closed.
    pub(crate) async fn purge_exports(&self) -> Result<u64, IdentityError> {
        let mut n = 0;
        for e in self.store().expired_exports(self.now()).await? {
            remove_if_present(&self.export_path(&e.id))?;
            self.store().delete_export(&e.id).await?;
            n += 1;
        }
        // What a builder that died left behind (an archive takes minutes, not a day).
        let dir = self.inner.exports_dir.clone();
        tokio::task::spawn_blocking(move || {
            remove_temporaries(&dir, Duration::from_secs(86_400), |_| true);
        })
        .await
        .map_err(|e| IdentityError::Internal(format!("export sweep: {e}")))?;
        Ok(n)
    }
}

/// Removes the archives' temporaries that `pick` chooses by name and that have been left
/// untouched for at least `min_age`.
fn remove_temporaries(dir: &std::path::Path, min_age: Duration, pick: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".zip.tmp") || !pick(&name) {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if age >= min_age {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn remove_if_present(path: &std::path::Path) -> Result<(), IdentityError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IdentityError::Internal(format!(
            "removing {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the archive's pieces into `tmp` as they come, then syncs it; its size.
fn write_zip(
    tmp: &std::path::Path,
    mut pieces: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<i64, IdentityError> {
    let io = |e: std::io::Error| IdentityError::Internal(format!("writing export: {e}"));
    let zip_err = |e: zip::result::ZipError| IdentityError::Internal(format!("zip: {e}"));
    let file = std::fs::File::create(tmp).map_err(io)?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::with_capacity(1 << 16, file));
    let compressed = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    // Originals can pass 4 GiB: their entries carry the zip64 sizes.
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    while let Some(piece) = pieces.blocking_recv() {
        match piece {
            Piece::Start { name, compress } => zip
                .start_file(name, if compress { compressed } else { stored })
                .map_err(zip_err)?,
            Piece::Data(bytes) => zip.write_all(&bytes).map_err(io)?,
        }
    }
    let file = zip
        .finish()
        .map_err(zip_err)?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    Ok(i64::try_from(size).unwrap_or(i64::MAX))
}
