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

use anyhow::{bail, Context};
use mica_blobs::ContentHasher;
use mica_client::{Client, ClientError};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::agent::{describe, read_json, refresh_session, AgentConfig, Linked};

/// Bytes sent per upload request; a failed request resumes from the server's offset.
const UPLOAD_PIECE: usize = 8 << 20;
/// Attempts at one piece before the backup gives up.
const UPLOAD_ATTEMPTS: u32 = 5;

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

fn api(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{}", describe(&e))
}

async fn session(cfg: &AgentConfig) -> anyhow::Result<(Client, Linked)> {
    let linked: Linked = read_json(&cfg.data_dir.join("device.json"))?
        .context("this device is not linked: run `mica agent link` first")?;
    let client = Client::new(cfg.base());
    let tokens = refresh_session(cfg, &client).await?;
    Ok((client.with_token(&tokens.access_token), linked))
}

/// The kind of a part, from its name.
pub fn kind_of(name: &str) -> &'static str {
    let first = name.split('/').next().unwrap_or("");
    let stem = first.split('.').next().unwrap_or("");
    mica_cloud::backups::PART_KINDS
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

/// Every regular file under `root`, by name (symbolic links are not followed: a backup holds
/// what is in the folder, not what it points at).
fn scan(root: &Path) -> anyhow::Result<Vec<Local>> {
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
                let Some(name) = name else {
                    tracing::warn!(path = %path.display(), "not backed up: the name is not UTF-8");
                    continue;
                };
                let (size, content) = hash_file(&path)?;
                out.push(Local {
                    name,
                    path,
                    size,
                    content,
                });
            }
        }
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

/// Uploads a file as a resumable upload, resuming after a failed request; returns the file's id.
async fn upload(user: &Client, path: &Path, size: u64) -> anyhow::Result<String> {
    let id = user.create_upload(size).await.map_err(api)?;
    let mut file = tokio::fs::File::open(path).await?;
    let mut offset = 0u64;
    let mut failures = 0;
    while offset < size {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let want = usize::try_from(size - offset)
            .unwrap_or(UPLOAD_PIECE)
            .min(UPLOAD_PIECE);
        let mut piece = vec![0u8; want];
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        file.read_exact(&mut piece)
            .await
            .with_context(|| format!("{} changed while it was backed up", path.display()))?;
        match user.upload_bytes(&id, offset, piece).await {
            Ok(o) => {
                offset = o;
                failures = 0;
            }
            Err(e @ ClientError::Api { .. })
                if e.status()
                    .is_some_and(|s| s.is_client_error() && s.as_u16() != 409) =>
            {
                return Err(api(e));
            }
            Err(e) => {
                failures += 1;
                if failures >= UPLOAD_ATTEMPTS {
                    return Err(api(e));
                }
                tokio::time::sleep(std::time::Duration::from_millis(500 << failures)).await;
                offset = user.upload_offset(&id).await.map_err(api)?;
            }
        }
    }
    let info = user.upload_info(&id).await.map_err(api)?;
    info["file_id"]
        .as_str()
        .map(str::to_owned)
        .context("the server did not finish the upload")
}

/// `mica agent backup`: backs up the folder; returns the backup as the server describes it.
pub async fn backup(cfg: &AgentConfig) -> anyhow::Result<Value> {
    let root = folder(cfg);
    if !root.is_dir() {
        bail!("nothing to back up: {} is not a folder", root.display());
    }
    let (user, _) = session(cfg).await?;
    let scan_root = root.clone();
    let files = tokio::task::spawn_blocking(move || scan(&scan_root)).await??;
    if files.is_empty() {
        bail!("nothing to back up: {} is empty", root.display());
    }
    let parts: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({ "name": f.name, "kind": kind_of(&f.name), "size": f.size,
                    "content_hash": f.content })
        })
        .collect();
    // Twice at most: a part the plan said was held can have been deleted meanwhile (its last
    // backup removed), and the server then names it missing.
    for attempt in 0..2 {
        let plan = user
            .plan_backup(&Value::from(parts.clone()))
            .await
            .map_err(api)?;
        let upload_names: Vec<&str> = plan["upload"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // One upload per content, even when two parts hold the same bytes.
        let mut uploaded: HashMap<&str, String> = HashMap::new();
        let mut with_files = parts.clone();
        for (f, part) in files.iter().zip(with_files.iter_mut()) {
            if !upload_names.contains(&f.name.as_str()) {
                continue;
            }
            let file_id = match uploaded.get(f.content.as_str()) {
                Some(id) => id.clone(),
                None => {
                    let id = upload(&user, &f.path, f.size).await?;
                    uploaded.insert(&f.content, id.clone());
                    id
                }
            };
            part["file_id"] = json!(file_id);
        }
        match user.create_backup(&Value::from(with_files)).await {
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
    let (user, linked) = session(cfg).await?;
    let backups = user.backups().await.map_err(api)?;
    if backups.is_empty() {
        println!("no backups");
    }
    for b in backups {
        let this = if b["device"]["id"].as_str() == Some(linked.device_id.as_str()) {
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

/// `mica agent restore`: writes a backup's parts (all, or those chosen) into the folder.
/// Returns how many parts were restored.
pub async fn restore(cfg: &AgentConfig, opts: &RestoreOptions) -> anyhow::Result<usize> {
    let (user, linked) = session(cfg).await?;
    let id = match &opts.backup {
        Some(id) => id.clone(),
        None => {
            let all = user.backups().await.map_err(api)?;
            let mine = all
                .iter()
                .find(|b| b["device"]["id"].as_str() == Some(linked.device_id.as_str()));
            mine.or(all.first())
                .and_then(|b| b["id"].as_str())
                .map(str::to_owned)
                .context("the account has no backup to restore")?
        }
    };
    let b = user.backup(&id).await.map_err(api)?;
    let parts = b["part_list"].as_array().cloned().unwrap_or_default();
    let chosen: Vec<&Value> = parts
        .iter()
        .filter(|p| {
            let name = p["name"].as_str().unwrap_or("");
            let kind = p["kind"].as_str().unwrap_or("");
            (opts.parts.is_empty()
                || opts.parts.iter().any(|w| {
                    name == w || name.starts_with(&format!("{}/", w.trim_end_matches('/')))
                }))
                && (opts.kinds.is_empty() || opts.kinds.iter().any(|k| k == kind))
        })
        .collect();
    if chosen.is_empty() {
        bail!("backup {id} holds no part that matches");
    }
    for w in &opts.parts {
        let w = w.trim_end_matches('/');
        if !chosen.iter().any(|p| {
            let n = p["name"].as_str().unwrap_or("");
            n == w || n.starts_with(&format!("{w}/"))
        }) {
            bail!("backup {id} holds no part {w:?}");
        }
    }
    let root = opts.into.clone().unwrap_or_else(|| folder(cfg));
    let mut bytes = 0u64;
    for p in &chosen {
        let name = p["name"].as_str().unwrap_or("");
        let dest = destination(&root, name)?;
        let size = p["size"].as_u64().context("a part without a size")?;
        let content = p["content_hash"].as_str().unwrap_or("");
        let file_id = p["file_id"].as_str().context("a part without a file")?;
        download(&user, file_id, &dest, size, content)
            .await
            .with_context(|| format!("restoring {name}"))?;
        bytes += size;
    }
    println!(
        "restored {} parts ({bytes} bytes) from backup {id} of {} ({})",
        chosen.len(),
        b["device"]["name"].as_str().unwrap_or("?"),
        b["created_at"].as_str().unwrap_or("?"),
    );
    Ok(chosen.len())
}

/// Downloads a part next to `dest`, checks its size and content id, then puts it in place
/// (fsync, rename): a damaged or cut download never replaces what is there.
async fn download(
    user: &Client,
    file_id: &str,
    dest: &Path,
    size: u64,
    content: &str,
) -> anyhow::Result<()> {
    let parent = dest.parent().context("a part at the root")?;
    tokio::fs::create_dir_all(parent).await?;
    let tmp = dest.with_file_name(format!(
        ".{}.restoring",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("part")
    ));
    let mut out = tokio::fs::File::create(&tmp).await?;
    let mut hasher = ContentHasher::new();
    let mut resp = user.file_content(file_id, 0).await.map_err(api)?;
    while let Some(piece) = resp.chunk().await? {
        hasher.update(&piece);
        out.write_all(&piece).await?;
    }
    out.sync_all().await?;
    drop(out);
    if hasher.size() != size || hasher.finish() != content {
        let _ = tokio::fs::remove_file(&tmp).await;
        bail!(
            "the bytes the server sent do not match the backup's content id: this part is damaged"
        );
    }
    tokio::fs::rename(&tmp, dest).await?;
    if let Ok(d) = tokio::fs::File::open(parent).await {
        let _ = d.sync_all().await;
    }
    Ok(())
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
