//! The device side of backups (CL-7): `mica agent backup`, `mica agent backups` and
//! `mica agent restore`.
//!
//! On this stand-in for a phone, what a backup holds is the agent's backup folder
//! (`[backup] folder`, by default `<data_dir>/backup`): every regular file in it is a part,
//! named by its path in the folder; its kind is the name's first segment when that is one of
//! the kinds (`apps.json`, `settings/system.json`, `app_data/org.example.notes.tar`), else
//! `other`. A backup uploads only the parts whose content no backup of the account holds, each
//! as a resumable upload. A restore writes the parts it takes back into the folder (or another
//! one), each checked against its content id before it replaces anything.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mica_blobs::ContentHasher;
use mica_client::{Client, ClientError};
use mica_cloud::backups::{valid_part_name, MAX_PARTS, PART_KINDS};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::agent::{describe, read_json, refresh_session, AgentConfig, Linked};

/// Bytes sent per upload request; a failed request resumes from the server's offset.
const UPLOAD_PIECE: usize = 8 << 20;
/// Attempts at one piece of an upload or download before it gives up.
const ATTEMPTS: u32 = 5;
/// What a part being restored is called until it is checked: `.<name>.restoring`.
const RESTORING: &str = ".restoring";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// What is backed up and restored: `<data_dir>/backup` unless set.
    pub folder: Option<PathBuf>,
}

/// What `mica agent restore` takes.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The backup; the newest of this device, else the newest of the account.
    pub backup: Option<String>,
    /// Only these parts (a name, or a folder of names).
    pub parts: Vec<String>,
    /// Only parts of these kinds.
    pub kinds: Vec<String>,
    /// Where to write; the backup folder unless set.
    pub into: Option<PathBuf>,
}

fn folder(cfg: &AgentConfig) -> PathBuf {
    cfg.backup
        .folder
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("backup"))
}

pub(crate) fn api(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{}", describe(&e))
}

/// How long an access token is used before the session is refreshed (tokens live 15 minutes
/// by default): a backup or restore of many gigabytes outlasts several.
const TOKEN_USE: Duration = Duration::from_secs(5 * 60);

/// This device's session, refreshed as a long backup or restore goes on.
pub(crate) struct Session<'a> {
    cfg: &'a AgentConfig,
    client: Client,
    user: Client,
    since: Instant,
    linked: Linked,
}

impl<'a> Session<'a> {
    pub(crate) async fn open(cfg: &'a AgentConfig) -> anyhow::Result<Session<'a>> {
        let linked: Linked = read_json(&cfg.data_dir.join("device.json"))?
            .context("this device is not linked: run `mica agent link` first")?;
        let client = Client::new(cfg.base());
        let tokens = refresh_session(cfg, &client).await?;
        Ok(Session {
            cfg,
            user: client.with_token(&tokens.access_token),
            client,
            since: Instant::now(),
            linked,
        })
    }

    /// The signed-in client, with a token young enough for the next request.
    pub(crate) async fn user(&mut self) -> anyhow::Result<&Client> {
        if self.since.elapsed() > TOKEN_USE {
            self.refresh().await?;
        }
        Ok(&self.user)
    }

    /// A new access token now (after a 401: a server whose tokens live less than
    /// [`TOKEN_USE`]).
    async fn refresh(&mut self) -> anyhow::Result<()> {
        let tokens = refresh_session(self.cfg, &self.client).await?;
        self.user = self.client.with_token(&tokens.access_token);
        self.since = Instant::now();
        Ok(())
    }
}

/// A progress bar of bytes on standard error, drawn only when a person watches (a terminal).
fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

fn unauthorized(e: &ClientError) -> bool {
    e.status().is_some_and(|s| s.as_u16() == 401)
}

/// The kind of a part, from its name.
pub fn kind_of(name: &str) -> &'static str {
    let first = name.split('/').next().unwrap_or("");
    let stem = first.split('.').next().unwrap_or("");
    PART_KINDS
        .iter()
        .find(|k| **k == stem)
        .copied()
        .unwrap_or("other")
}

/// A file of the folder: its part name, path, size and content id.
struct Local {
    name: String,
    path: PathBuf,
    size: u64,
    content: String,
}

/// A restore's file being written, not yet in place.
fn is_restoring(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with('.') && f.ends_with(RESTORING))
}

/// Every regular file under `root`, by name (symbolic links are not followed: a backup holds
/// what is in the folder, not what it points at). Files whose name cannot be a part's are left
/// out and named in `skipped`.
fn scan(root: &Path, skipped: &mut Vec<String>) -> anyhow::Result<Vec<Local>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for e in entries {
            let e = e?;
            let t = e.file_type()?;
            let path = e.path();
            if t.is_dir() {
                dirs.push(path);
            } else if t.is_file() {
                let rel = path.strip_prefix(root)?;
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_str())
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.join("/"));
                match name {
                    Some(n) if is_restoring(&n) => {}
                    Some(n) if valid_part_name(&n) => out.push(Local {
                        name: n,
                        path,
                        size: 0,
                        content: String::new(),
                    }),
                    _ => skipped.push(rel.display().to_string()),
                }
            }
        }
        if out.len() > MAX_PARTS {
            bail!(
                "{} holds more than {MAX_PARTS} files: a backup holds at most that many parts; \
                 put small files together in an archive",
                root.display()
            );
        }
    }
    for f in &mut out {
        (f.size, f.content) = hash_file(&f.path)?;
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn hash_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = ContentHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok((h.size(), h.finish()))
}

/// A file as uploaded: its id, and the size and content id of the bytes that were sent (the
/// file may have changed since it was first read).
struct Uploaded {
    file_id: String,
    size: u64,
    content: String,
}

/// Uploads a file as a resumable upload, resuming after a failed request, hashing what it
/// sends.
async fn upload(
    session: &mut Session<'_>,
    path: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<Uploaded> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    let id = session
        .user()
        .await?
        .create_upload(size)
        .await
        .map_err(api)?;
    let mut hasher = ContentHasher::new();
    let mut offset = 0u64;
    let mut failures = 0;
    while offset < size {
        let want = usize::try_from(size - offset)
            .unwrap_or(UPLOAD_PIECE)
            .min(UPLOAD_PIECE);
        let mut piece = vec![0u8; want];
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        file.read_exact(&mut piece)
            .await
            .with_context(|| format!("{} shrank while it was backed up", path.display()))?;
        // Each byte is hashed once, even when a failed request sends it again.
        let hashed = hasher.size();
        if offset + want as u64 > hashed {
            let from = usize::try_from(hashed.saturating_sub(offset)).unwrap_or(0);
            hasher.update(&piece[from..]);
        }
        match session.user().await?.upload_bytes(&id, offset, piece).await {
            Ok(o) => {
                bar.inc(o.saturating_sub(offset));
                offset = o;
                failures = 0;
            }
            Err(e @ ClientError::Api { .. })
                if e.status()
                    .is_some_and(|s| s.is_client_error() && !matches!(s.as_u16(), 401 | 409)) =>
            {
                return Err(api(e));
            }
            Err(e) => {
                failures += 1;
                if failures >= ATTEMPTS {
                    return Err(api(e));
                }
                if unauthorized(&e) {
                    session.refresh().await?;
                }
                tokio::time::sleep(Duration::from_millis(500 << failures)).await;
                offset = session
                    .user()
                    .await?
                    .upload_offset(&id)
                    .await
                    .map_err(api)?;
            }
        }
    }
    let info = session.user().await?.upload_info(&id).await.map_err(api)?;
    let file_id = info["file_id"]
        .as_str()
        .map(str::to_owned)
        .context("the server did not finish the upload")?;
    Ok(Uploaded {
        file_id,
        size,
        content: hasher.finish(),
    })
}

/// `mica agent backup`: backs up the folder; returns the backup as the server describes it.
pub async fn backup(cfg: &AgentConfig) -> anyhow::Result<Value> {
    let root = folder(cfg);
    if !root.is_dir() {
        bail!("nothing to back up: {} is not a folder", root.display());
    }
    let mut session = Session::open(cfg).await?;
    let scan_root = root.clone();
    let (files, skipped) = tokio::task::spawn_blocking(move || {
        let mut skipped = Vec::new();
        scan(&scan_root, &mut skipped).map(|f| (f, skipped))
    })
    .await??;
    for s in &skipped {
        eprintln!("not backed up: {s:?} (a part's name is made of letters, digits and . _ - + @)");
    }
    if files.is_empty() {
        bail!("nothing to back up: {} holds no file", root.display());
    }
    let mut parts: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({ "name": f.name, "kind": kind_of(&f.name), "size": f.size,
                    "content_hash": f.content })
        })
        .collect();
    // One upload per content, even when two parts hold the same bytes, kept across attempts.
    let mut uploaded: HashMap<String, (String, u64, String)> = HashMap::new();
    // Twice at most: a part the plan said was held can have been deleted meanwhile (its last
    // backup removed), and the server then names it missing.
    for attempt in 0..2 {
        let plan = session
            .user()
            .await?
            .plan_backup(&Value::from(parts.clone()))
            .await
            .map_err(api)?;
        let bar = progress(plan["upload_bytes"].as_u64().unwrap_or(0), "uploading");
        let upload_names: Vec<String> = plan["upload"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        for (f, part) in files.iter().zip(parts.iter_mut()) {
            if !upload_names.contains(&f.name) {
                continue;
            }
            let (file_id, size, content) = match uploaded.get(&f.content) {
                Some(u) => u.clone(),
                None => {
                    let u = upload(&mut session, &f.path, &bar).await?;
                    let u = (u.file_id, u.size, u.content);
                    // Another part with the bytes first read may share it, unless the file
                    // changed before it was sent.
                    if u.2 == f.content {
                        uploaded.insert(f.content.clone(), u.clone());
                    }
                    u
                }
            };
            // What was sent is what the part holds, should the file have changed since it
            // was first read.
            part["file_id"] = json!(file_id);
            part["size"] = json!(size);
            part["content_hash"] = json!(content);
        }
        bar.finish_and_clear();
        match session
            .user()
            .await?
            .create_backup(&Value::from(parts.clone()))
            .await
        {
            Ok(b) => {
                println!(
                    "backed up {} parts ({} bytes) as {}; {} bytes were new",
                    b["parts"],
                    b["size"],
                    b["id"].as_str().unwrap_or("?"),
                    b["added"]
                );
                return Ok(b);
            }
            Err(e) if attempt == 0 && e.code() == Some("backup_parts_missing") => continue,
            Err(e) => return Err(api(e)),
        }
    }
    bail!("the server kept asking for parts it had said it held")
}

/// `mica agent backups`: the account's backups, from every device.
pub async fn list(cfg: &AgentConfig) -> anyhow::Result<()> {
    let mut session = Session::open(cfg).await?;
    let backups = session.user().await?.backups().await.map_err(api)?;
    if backups.is_empty() {
        println!("no backups");
    }
    for b in backups {
        let this = if b["device"]["id"].as_str() == Some(session.linked.device_id.as_str()) {
            " (this device)"
        } else {
            ""
        };
        println!(
            "{}  {}  {} {}{}  {} parts, {} bytes  {}",
            b["id"].as_str().unwrap_or("?"),
            b["created_at"].as_str().unwrap_or("?"),
            b["device"]["name"].as_str().unwrap_or("?"),
            b["device"]["model"].as_str().unwrap_or(""),
            this,
            b["parts"],
            b["size"],
            b["state"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}

/// Where a part goes under `root`: only plain segments, whatever the server says.
fn destination(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let rel = Path::new(name);
    if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("the backup holds a part named {name:?}, which is not a relative path");
    }
    Ok(root.join(rel))
}

fn matches(name: &str, wanted: &str) -> bool {
    let w = wanted.trim_end_matches('/');
    name == w || name.strip_prefix(w).is_some_and(|r| r.starts_with('/'))
}

/// `mica agent restore`: writes a backup's parts (all, or those chosen) into the folder.
/// Every part is downloaded and checked first; only then are they all put in place, so a
/// failed restore changes nothing. Returns how many parts were restored.
pub async fn restore(cfg: &AgentConfig, opts: &RestoreOptions) -> anyhow::Result<usize> {
    let mut session = Session::open(cfg).await?;
    let id = match &opts.backup {
        Some(id) => id.clone(),
        None => {
            // The newest intact backup of this device, else of the account.
            let all = session.user().await?.backups().await.map_err(api)?;
            let usable = |b: &&Value| b["state"] != "damaged";
            let mine = all
                .iter()
                .filter(usable)
                .find(|b| b["device"]["id"].as_str() == Some(session.linked.device_id.as_str()));
            mine.or(all.iter().find(usable))
                .and_then(|b| b["id"].as_str())
                .map(str::to_owned)
                .context("the account has no intact backup to restore")?
        }
    };
    let b = session.user().await?.backup(&id).await.map_err(api)?;
    let parts = b["part_list"].as_array().cloned().unwrap_or_default();
    for w in &opts.parts {
        if !parts
            .iter()
            .any(|p| matches(p["name"].as_str().unwrap_or(""), w))
        {
            bail!("backup {id} holds no part {w:?}");
        }
    }
    let chosen: Vec<&Value> = parts
        .iter()
        .filter(|p| {
            let name = p["name"].as_str().unwrap_or("");
            let kind = p["kind"].as_str().unwrap_or("");
            (opts.parts.is_empty() || opts.parts.iter().any(|w| matches(name, w)))
                && (opts.kinds.is_empty() || opts.kinds.iter().any(|k| k == kind))
        })
        .collect();
    if chosen.is_empty() {
        bail!("backup {id} holds no part that matches");
    }
    let root = opts.into.clone().unwrap_or_else(|| folder(cfg));
    let mut ready: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut bytes = 0u64;
    let bar = progress(
        chosen.iter().filter_map(|p| p["size"].as_u64()).sum(),
        "restoring",
    );
    let mut failed = None;
    for p in &chosen {
        let name = p["name"].as_str().unwrap_or("");
        let got = async {
            let dest = destination(&root, name)?;
            let size = p["size"].as_u64().context("a part without a size")?;
            let content = p["content_hash"].as_str().unwrap_or("");
            let file_id = p["file_id"].as_str().context("a part without a file")?;
            let tmp = download(&mut session, file_id, &dest, size, content, &bar).await?;
            anyhow::Ok((tmp, dest, size))
        }
        .await;
        match got {
            Ok((tmp, dest, size)) => {
                ready.push((tmp, dest));
                bytes += size;
            }
            Err(e) => {
                failed = Some(e.context(format!("restoring {name}")));
                break;
            }
        }
    }
    bar.finish_and_clear();
    if let Some(e) = failed {
        for (tmp, _) in &ready {
            let _ = tokio::fs::remove_file(tmp).await;
        }
        return Err(e.context("nothing was restored"));
    }
    // A folder where a part goes would stop its rename half-way through: refused first.
    if let Some((_, dest)) = ready.iter().find(|(_, d)| d.is_dir()) {
        for (tmp, _) in &ready {
            let _ = tokio::fs::remove_file(tmp).await;
        }
        bail!(
            "{} is a folder, where the backup has a file: nothing was restored",
            dest.display()
        );
    }
    for (i, (tmp, dest)) in ready.iter().enumerate() {
        if let Err(e) = tokio::fs::rename(tmp, dest).await {
            for (t, _) in &ready[i..] {
                let _ = tokio::fs::remove_file(t).await;
            }
            return Err(anyhow::Error::from(e).context(format!(
                "putting {} in place ({i} of {} parts were restored before it)",
                dest.display(),
                ready.len()
            )));
        }
        if let Some(parent) = dest.parent() {
            if let Ok(d) = tokio::fs::File::open(parent).await {
                let _ = d.sync_all().await;
            }
        }
    }
    println!(
        "restored {} parts ({bytes} bytes) from backup {id} of {} ({})",
        chosen.len(),
        b["device"]["name"].as_str().unwrap_or("?"),
        b["created_at"].as_str().unwrap_or("?"),
    );
    Ok(chosen.len())
}

/// Downloads a part next to `dest` (resuming after a failed request) and checks its size and
/// content id; returns the checked file, fsynced, for the caller to put in place. Nothing is
/// left behind when it fails.
async fn download(
    session: &mut Session<'_>,
    file_id: &str,
    dest: &Path,
    size: u64,
    content: &str,
    bar: &ProgressBar,
) -> anyhow::Result<PathBuf> {
    let parent = dest.parent().context("a part at the root")?;
    tokio::fs::create_dir_all(parent).await?;
    let tmp = dest.with_file_name(format!(
        ".{}{RESTORING}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("part")
    ));
    let result = async {
        let mut out = tokio::fs::File::create(&tmp).await?;
        let mut hasher = ContentHasher::new();
        let mut failures = 0;
        loop {
            let at = hasher.size();
            // Only a server that is unavailable for a moment (or a token that ran out) is
            // asked again; an answer such as "damaged" or "not found" stands.
            let got = match session.user().await?.file_content(file_id, at).await {
                Ok(mut resp) => {
                    if at > 0 && resp.status().as_u16() != 206 {
                        // Something between ignored the range and sends the whole part:
                        // start the file again.
                        use tokio::io::AsyncSeekExt;
                        out.set_len(0).await?;
                        out.seek(std::io::SeekFrom::Start(0)).await?;
                        hasher = ContentHasher::new();
                        bar.set_position(bar.position().saturating_sub(at));
                    }
                    loop {
                    match resp.chunk().await {
                        Ok(Some(piece)) => {
                            // Written, then hashed: a byte is counted only once it is kept.
                            // A local write that fails is not the server's doing: it ends
                            // the restore.
                            out.write_all(&piece).await?;
                            hasher.update(&piece);
                            bar.inc(piece.len() as u64);
                        }
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(anyhow::Error::from(e)),
                    }
                    }
                }
                Err(e @ ClientError::Api { .. })
                    if !e
                        .status()
                        .is_some_and(|s| matches!(s.as_u16(), 401 | 502..=504)) =>
                {
                    return Err(api(e));
                }
                Err(e) => {
                    if unauthorized(&e) {
                        session.refresh().await?;
                    }
                    Err(api(e))
                }
            };
            // A connection that broke after the last byte has all it needs.
            if hasher.size() >= size {
                break;
            }
            // Only attempts that brought nothing count against the limit: a long download
            // over a connection that drops now and then goes on.
            if hasher.size() > at {
                failures = 0;
            }
            failures += 1;
            if failures >= ATTEMPTS {
                return Err(got.err().unwrap_or_else(|| {
                    anyhow::anyhow!("the server kept ending the download early")
                }));
            }
            if got.is_err() {
                tokio::time::sleep(Duration::from_millis(500 << failures)).await;
            }
        }
        // tokio's file writes in the background: flush reports a write that failed, and the
        // length on disk must be what was counted.
        out.flush().await?;
        out.sync_all().await?;
        if out.metadata().await?.len() != hasher.size() {
            bail!("the part could not be written whole to {}", tmp.display());
        }
        if hasher.size() != size || hasher.finish() != content {
            bail!(
                "the bytes the server sent do not match the backup's content id: this part is damaged"
            );
        }
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_first_segment() {
        assert_eq!(kind_of("apps.json"), "apps");
        assert_eq!(kind_of("settings/system.json"), "settings");
        assert_eq!(kind_of("app_data/org.example.tar"), "app_data");
        assert_eq!(kind_of("wallpaper.png"), "wallpaper");
        assert_eq!(kind_of("notes.txt"), "other");
    }

    #[test]
    fn parts_land_only_under_the_folder() {
        let root = Path::new("/r");
        assert!(destination(root, "a/b.json").is_ok());
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(destination(root, bad).is_err(), "{bad}");
        }
    }
}
