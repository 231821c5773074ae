//! `mica agent feedback`: send the operator a bug report or an idea from this linked device,
//! with files attached (its logs, say); the server adds which device it came from. `mica agent
//! reports`: the account's reports and the operator's answers.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::agent::AgentConfig;
use crate::backup::{api, Session};

/// What `mica agent feedback` sends.
pub struct FeedbackOptions {
    pub kind: String,
    pub subject: String,
    pub message: String,
    pub app: Option<String>,
    pub attach: Vec<PathBuf>,
}

/// The media type of an attachment, from its name.
fn media_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("log" | "txt" | "out" | "err") => "text/plain",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("zip") => "application/zip",
        Some("gz") => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// Sends the report; returns what the server answered.
pub async fn send(cfg: &AgentConfig, opts: &FeedbackOptions) -> anyhow::Result<Value> {
    let mut attachments = Vec::new();
    for path in &opts.attach {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", path.display()))?;
        attachments.push(json!({
            "name": name,
            "media_type": media_type(path),
            "content": base64::engine::general_purpose::STANDARD.encode(&bytes),
        }));
    }
    let mut session = Session::open(cfg).await?;
    let body = json!({
        "kind": opts.kind,
        "subject": opts.subject,
        "description": opts.message,
        "app": opts.app,
        "attachments": attachments,
    });
    session
        .user()
        .await?
        .send_feedback(&body)
        .await
        .map_err(api)
}

/// `mica agent reports`: the account's reports, newest first, with the operator's answers.
pub async fn list(cfg: &AgentConfig) -> anyhow::Result<()> {
    let mut session = Session::open(cfg).await?;
    let reports = session.user().await?.feedback().await.map_err(api)?;
    let reports = reports.as_array().cloned().unwrap_or_default();
    if reports.is_empty() {
        println!("no reports");
    }
    for r in reports {
        let text = |k: &str| r[k].as_str().unwrap_or("").to_owned();
        println!(
            "{}  {}  {:<6} {:<6} {}",
            text("id"),
            text("created_at"),
            text("kind"),
            text("state"),
            text("subject")
        );
        if let Some(reply) = r["reply"].as_str() {
            for line in reply.lines() {
                println!("    answer: {line}");
            }
        }
    }
    Ok(())
}
