//! `mica agent`: the device side of Find Device and the reference client of the sync protocol,
//! for a Linux laptop or a test device (PRODUCT.md DV-8).
//!
//! It links the device to an account, keeps the command channel open (reconnecting with
//! jittered back-off when it drops or goes silent), reports where it is, runs the owner's
//! commands through configured hooks — each at most once, even when the server sends it again —
//! honours lost mode until the account password is typed, and mirrors the categories it syncs.
//!
//! Files: `data_dir` holds what a factory reset wipes (`device.json` with the credential,
//! `journal.json` of commands run, `lost_mode.json`, `sync/`); `state_file` is the stand-in
//! for the partition that survives a reset, and holds the activation-lock marker.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use mica_client::{Change, Client, ClientError};
use rand::Rng;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION, USER_AGENT};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

/// The agent's configuration file (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The Mica server, e.g. `https://cloud.example.org`.
    pub server: String,
    /// What a factory reset wipes.
    pub data_dir: PathBuf,
    /// What survives a reset: the activation-lock marker.
    pub state_file: PathBuf,
    pub device: DeviceConfig,
    #[serde(default)]
    pub location: LocationConfig,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub backup: crate::backup::BackupConfig,
    /// Reconnect when the channel is silent this long (the server pings every 25 s).
    #[serde(default = "default_silence")]
    pub silence_secs: u64,
    /// How the command channel connects: `websocket` (the default; falls back to `sse` by
    /// itself when the way to the server does not pass the upgrade) or `sse`.
    #[serde(default)]
    pub channel: ChannelKind,
}

/// The command channel's transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    #[default]
    Websocket,
    Sse,
}

fn default_silence() -> u64 {
    75
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub name: String,
    pub model: String,
    #[serde(default)]
    pub os_version: String,
    #[serde(default)]
    pub imeis: Vec<String>,
    pub serial: Option<String>,
    /// Opt in to Find Device when linking (and so to the activation lock). The agent exists
    /// for Find Device, so its configuration opts in unless this says `false`.
    #[serde(default = "yes")]
    pub find_device: bool,
}

fn yes() -> bool {
    true
}

/// Where the device is: a fixed position, a command printing `lat lon [accuracy]`, or
/// GeoClue's `where-am-i`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationConfig {
    #[serde(default = "fixed")]
    pub source: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub accuracy: Option<f64>,
    pub command: Option<String>,
    /// Report this often (0: only when asked to locate).
    #[serde(default = "default_location_interval")]
    pub interval_secs: u64,
    /// While in lost mode, report at least this often (0: as usual): the owner is told where
    /// the device turns up.
    #[serde(default = "default_lost_interval")]
    pub lost_interval_secs: u64,
}

fn default_lost_interval() -> u64 {
    120
}

fn fixed() -> String {
    "fixed".into()
}

fn default_location_interval() -> u64 {
    900
}

impl Default for LocationConfig {
    fn default() -> Self {
        LocationConfig {
            source: fixed(),
            lat: None,
            lon: None,
            accuracy: None,
            command: None,
            interval_secs: default_location_interval(),
            lost_interval_secs: default_lost_interval(),
        }
    }
}

/// Shell commands run for the owner's commands. `erase` runs before the data folder is wiped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Plays the ring's sound once; run again and again (a round every [`RING_ROUND`] at
    /// most) until the ring is stopped on the device (`mica agent stop-ring`) or
    /// `ring_for_secs` have passed.
    pub ring: Option<String>,
    #[serde(default = "default_ring_for")]
    pub ring_for_secs: u64,
    pub lock: Option<String>,
    pub unlock: Option<String>,
    pub erase: Option<String>,
    /// Shows a notice from the account to the device's user (a request to recover the account,
    /// say), with `MICA_NOTICE_KIND`, `MICA_NOTICE_TITLE` and `MICA_NOTICE_TEXT` set. Notices
    /// are logged whether or not it is set; once it exits 0 (or without one) the server is
    /// told the notice was shown, and a hook that fails sees it again at the next connection.
    pub notice: Option<String>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            ring: None,
            ring_for_secs: default_ring_for(),
            lock: None,
            unlock: None,
            erase: None,
            notice: None,
        }
    }
}

/// A ring that nobody stops on the device ends after five minutes.
fn default_ring_for() -> u64 {
    300
}

/// The shortest round of a ring: a sound hook that returns at once is run again after this,
/// not in a tight loop.
const RING_ROUND: Duration = Duration::from_secs(1);

/// The running agent's control socket in its data folder: `mica agent stop-ring` talks to it.
const CONTROL_SOCKET: &str = "control.sock";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Categories to mirror into `data_dir/sync` (their default collections).
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default = "default_sync_interval")]
    pub interval_secs: u64,
}

fn default_sync_interval() -> u64 {
    300
}

impl AgentConfig {
    pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
        use figment::providers::{Format, Toml};
        let cfg: AgentConfig = figment::Figment::from(Toml::file_exact(path))
            .extract()
            .with_context(|| format!("reading the agent configuration {}", path.display()))?;
        Ok(cfg)
    }

    pub(crate) fn base(&self) -> String {
        self.server.trim_end_matches('/').to_owned()
    }

    fn hardware(&self) -> Value {
        json!({ "imeis": self.device.imeis, "serial": self.device.serial })
    }
}

/// What linking left in the data folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Linked {
    pub(crate) device_id: String,
    credential: String,
    account_id: String,
    refresh_token: String,
}

/// The activation-lock marker, in the state file that survives a reset.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    locked: bool,
    owner: String,
    device_id: String,
    /// An erase whose result the server has not taken yet: the wipe removes the credential
    /// with the rest of the data folder, so what it takes to report it waits here until the
    /// report gets through (the next `run` or `link` tries again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    erased: Option<ErasedReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ErasedReport {
    command: String,
    credential: String,
    /// Whether the wipe finished. Noted before the erase hook runs, so a machine that stopped
    /// during it finishes the wipe at its next start before `done` is reported. (A marker
    /// without it was written by an agent that noted erases only once wiped.)
    #[serde(default = "yes")]
    wiped: bool,
    /// The erase failed, for this reason: that is what is reported, and nothing runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
}

/// A refusal that sending again will not change (a 4xx other than "too many requests").
fn refused_for_good(status: reqwest::StatusCode) -> bool {
    status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// Reports an erase the server has not taken yet, if the state file holds one — finishing its
/// wipe first when the machine stopped during it; forgets it once the server answers (taken,
/// or refused for good).
async fn settle_erase(cfg: &AgentConfig) -> anyhow::Result<()> {
    let Some(mut marker) = read_json::<Marker>(&cfg.state_file)? else {
        return Ok(());
    };
    let Some(mut e) = marker.erased.clone() else {
        return Ok(());
    };
    let mut body = json!({ "outcome": "done" });
    if let Some(reason) = &e.failed {
        body = json!({ "outcome": "failed", "reason": reason });
    } else if !e.wiped {
        match erase(cfg).await {
            Ok(()) => {
                e.wiped = true;
                marker.erased = Some(e.clone());
                write_json(&cfg.state_file, &marker)?;
                println!("finished the wipe of an erase that was interrupted");
            }
            Err(err) => {
                let reason: String = format!("the wipe did not finish: {err}")
                    .chars()
                    .take(500)
                    .collect();
                body = json!({ "outcome": "failed", "reason": reason });
            }
        }
    }
    let device = Client::new(cfg.base()).with_token(&e.credential);
    match device
        .raw(
            Method::POST,
            &format!("/api/v1/device/commands/{}/result", e.command),
            Some(body),
        )
        .await
    {
        // Taken, or refused for good (a 4xx): either way there is nothing more to send.
        Ok(_) => {
            marker.erased = None;
            write_json(&cfg.state_file, &marker)?;
            println!("reported the erase of this device");
        }
        Err(ClientError::Api { status, .. }) if refused_for_good(status) => {
            marker.erased = None;
            write_json(&cfg.state_file, &marker)?;
        }
        Err(err) => tracing::info!(error = %err, "the erase is still to be reported"),
    }
    Ok(())
}

/// Commands already run (or started), so a command sent again never runs twice.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Journal {
    /// Entries at or below this seq were dropped to keep the journal small: a frame this old
    /// cannot be told apart from a replay, so it is refused.
    #[serde(default)]
    forgotten_upto: i64,
    /// Command id → `started`, `done`, `failed: <reason>`, `expired`.
    entries: BTreeMap<String, (i64, String)>,
}

/// Writes a file so that a crash leaves the old content or the new, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // A name of its own, so two writers of one file never write into the same temporary.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{:08x}.tmp", rand::random::<u32>()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> anyhow::Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(v)?)
}

/// Reads the password from `MICA_AGENT_PASSWORD`, else one line of standard input.
fn password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("MICA_AGENT_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub(crate) fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Api { code, message, .. } => format!("{message} ({code})"),
        other => other.to_string(),
    }
}

/// A hook's process: `sh -c` with the agent's environment, less the account password and
/// code a person may have handed the agent (`mica agent unlock`, `link`).
fn hook_command(cmd: &str) -> std::process::Command {
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env_remove("MICA_AGENT_PASSWORD")
        .env_remove("MICA_AGENT_TOTP");
    c
}

/// Where a notice stands in this run of the agent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NoticeState {
    /// Its hook is running.
    Showing,
    /// Shown; the server has not confirmed it knows.
    Shown,
    /// Shown, and the server knows.
    Confirmed,
}

/// A notice from the account: logged, and handed to the `notice` hook (in the background:
/// the channel keeps being read); once shown — the hook exited 0, or there is none — the
/// server is told, and does not send it again. Each id is shown once per run (the server may
/// send one twice around a reconnect); one shown whose `seen` did not get through is only
/// confirmed again when it comes back, and one whose hook failed is shown again.
fn show_notice(agent: &Arc<Agent>, v: Value) {
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let (id, kind, title, text) = (field("id"), field("kind"), field("title"), field("text"));
    let before = if id.is_empty() {
        // From a server that does not number its notices: nothing to keep or confirm.
        None
    } else {
        agent.notices.lock().ok().and_then(|mut states| {
            let before = states.get(&id).copied();
            if before.is_none() {
                states.insert(id.clone(), NoticeState::Showing);
            }
            before
        })
    };
    match before {
        Some(NoticeState::Showing | NoticeState::Confirmed) => return,
        Some(NoticeState::Shown) => {
            let agent = agent.clone();
            tokio::spawn(async move { confirm_notice(&agent, &id).await });
            return;
        }
        None => {}
    }
    tracing::warn!(%kind, %title, "notice from the account");
    let agent = agent.clone();
    tokio::spawn(async move {
        if let Some(h) = &agent.cfg.hooks.notice {
            let env = vec![
                ("MICA_NOTICE_KIND", kind),
                ("MICA_NOTICE_TITLE", title),
                ("MICA_NOTICE_TEXT", text),
            ];
            if let Err(e) = run_hook(h, env).await {
                tracing::warn!(error = %e, "the notice hook failed");
                if let Ok(mut states) = agent.notices.lock() {
                    states.remove(&id);
                }
                return;
            }
        }
        if !id.is_empty() {
            confirm_notice(&agent, &id).await;
        }
    });
}

/// Tells the server a notice was shown (it is not sent again).
async fn confirm_notice(agent: &Agent, id: &str) {
    let state = match agent
        .post(&format!("/api/v1/device/notices/{id}/seen"), json!({}))
        .await
    {
        Ok(_) => {
            tracing::info!(notice = %id, "notice shown; the server knows");
            NoticeState::Confirmed
        }
        // Withdrawn or expired since: nothing more to say about it.
        Err(ClientError::Api { code, .. }) if code == "not_found" => NoticeState::Confirmed,
        Err(e) => {
            tracing::info!(error = %e, "could not tell the server a notice was shown");
            NoticeState::Shown
        }
    };
    if let Ok(mut states) = agent.notices.lock() {
        states.insert(id.to_owned(), state);
    }
}

/// Runs a hook with `sh -c`; `Ok(())` when it exits 0.
async fn run_hook(cmd: &str, env: Vec<(&'static str, String)>) -> Result<(), String> {
    let cmd = cmd.to_owned();
    tokio::task::spawn_blocking(move || {
        let status = hook_command(&cmd)
            .envs(env)
            .status()
            .map_err(|e| format!("cannot run the hook: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the hook exited with {status}"))
        }
    })
    .await
    .map_err(|e| format!("hook task: {e}"))?
}

/// Linking again over a kept link would orphan it: refused.
fn not_linked_yet(cfg: &AgentConfig) -> anyhow::Result<()> {
    let device_file = cfg.data_dir.join("device.json");
    if device_file.exists() {
        bail!(
            "this device is already linked ({}); erase it from the account or delete the data folder first",
            device_file.display()
        );
    }
    Ok(())
}

/// `mica agent link`: signs in, links this device, keeps its credential.
pub async fn link(cfg: &AgentConfig, login: &str) -> anyhow::Result<()> {
    if let Err(e) = settle_erase(cfg).await {
        tracing::warn!(error = %e, "reporting an earlier erase");
    }
    not_linked_yet(cfg)?;
    let client = Client::new(cfg.base());
    let pw = password()?;
    let device = mica_client::Device {
        model: Some(cfg.device.model.clone()),
        os_version: Some(cfg.device.os_version.clone()).filter(|s| !s.is_empty()),
        client: Some(concat!("mica-agent/", env!("CARGO_PKG_VERSION")).into()),
    };
    let tokens = match client.sign_in(login, &pw, Some(device)).await {
        Ok(t) => t,
        Err(ClientError::TwoStepRequired { challenge_id, .. }) => {
            let Ok(code) = std::env::var("MICA_AGENT_TOTP") else {
                bail!("this account uses two-step verification: set MICA_AGENT_TOTP to a code from the authenticator app");
            };
            client
                .sign_in_second_factor(&challenge_id, "totp", &code)
                .await
                .map_err(|e| anyhow::anyhow!("two-step sign-in failed: {}", describe(&e)))?
        }
        Err(e) => bail!("sign-in failed: {}", describe(&e)),
    };
    let user = client.with_token(&tokens.access_token);
    let resp = match user
        .raw(Method::POST, "/api/v1/devices", Some(declaration(cfg)))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            // Leave no session behind for a device that could not be linked.
            let _ = user.sign_out().await;
            bail!("linking failed: {}", describe(&e));
        }
    };
    let linked: Value = resp.json().await?;
    keep_link(
        cfg,
        &user,
        &linked,
        &tokens.account_id,
        &tokens.refresh_token,
    )
    .await
}

/// What this device declares when it is linked.
fn declaration(cfg: &AgentConfig) -> Value {
    json!({
        "name": cfg.device.name,
        "model": cfg.device.model,
        "os_version": cfg.device.os_version,
        "app_version": concat!("mica-agent ", env!("CARGO_PKG_VERSION")),
        "hardware": cfg.hardware(),
        "find_device": cfg.device.find_device,
    })
}

/// Keeps what linking gave (the device and its credential, the session's refresh token), the
/// activation-lock marker, and the categories to sync (told to the server with `user`, the
/// device's session).
async fn keep_link(
    cfg: &AgentConfig,
    user: &Client,
    linked: &Value,
    account_id: &str,
    refresh_token: &str,
) -> anyhow::Result<()> {
    let device_id = linked["device"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let credential = linked["credential"].as_str().unwrap_or_default().to_owned();
    if device_id.is_empty() || credential.is_empty() {
        bail!("the server's answer to linking is not understood: {linked}");
    }
    write_json(
        &cfg.data_dir.join("device.json"),
        &Linked {
            device_id: device_id.clone(),
            credential,
            account_id: account_id.to_owned(),
            refresh_token: refresh_token.to_owned(),
        },
    )?;
    // The server's word on Find Device: a relink keeps it on if it was. An erase still to be
    // reported stays noted.
    if linked["device"]["find_device"]
        .as_bool()
        .unwrap_or(cfg.device.find_device)
    {
        let erased = read_json::<Marker>(&cfg.state_file)?.and_then(|m| m.erased);
        write_json(
            &cfg.state_file,
            &Marker {
                locked: true,
                owner: mask(account_id),
                device_id: device_id.clone(),
                erased,
            },
        )?;
    }
    if !cfg.sync.categories.is_empty() {
        let cats: Vec<&str> = cfg.sync.categories.iter().map(String::as_str).collect();
        user.set_device_sync(&cats)
            .await
            .map_err(|e| anyhow::anyhow!("choosing the categories to sync: {}", describe(&e)))?;
    }
    println!("linked as {device_id} to account {}", mask(account_id));
    Ok(())
}

/// `mica agent link --code`: links this device without typing the password on it. Shows a
/// code for the owner to approve from a device already signed in to the account, and waits.
pub async fn link_by_code(cfg: &AgentConfig) -> anyhow::Result<()> {
    not_linked_yet(cfg)?;
    let client = Client::new(cfg.base());
    let code: Value = client
        .raw(Method::POST, "/api/v1/device/link", Some(declaration(cfg)))
        .await
        .map_err(|e| anyhow::anyhow!("asking for a link code failed: {}", describe(&e)))?
        .json()
        .await?;
    let (Some(device_code), Some(user_code)) =
        (code["device_code"].as_str(), code["user_code"].as_str())
    else {
        bail!("the server's answer to a link code request is not understood: {code}");
    };
    let expires_in = code["expires_in"].as_u64().unwrap_or(600);
    let mut interval = Duration::from_secs(code["interval"].as_u64().unwrap_or(5).max(1));
    println!(
        "To link this device, enter the code {user_code} on a phone or computer signed in to your account \
         (or there run `mica agent approve <its agent.toml> {user_code}`); see {}. \
         The code is valid for {} minutes.",
        code["verification_uri"].as_str().unwrap_or("the account's Devices page"),
        expires_in.div_ceil(60)
    );
    std::io::stdout().flush()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(expires_in);
    let body = json!({ "device_code": device_code });
    // Whether an answer may have been lost on the way: an approval it carried is used up.
    let mut answer_lost = false;
    let linked: Value = loop {
        tokio::time::sleep(interval).await;
        let answer = match client
            .raw(
                Method::POST,
                "/api/v1/device/link/token",
                Some(body.clone()),
            )
            .await
        {
            Ok(r) => r.json::<Value>().await.map_err(ClientError::from),
            Err(e) => Err(e),
        };
        match answer {
            Ok(v) => break v,
            Err(e) => match e.code() {
                Some("authorization_pending") => {}
                // RFC 8628 §3.5: wait five seconds longer from now on (or as long as the server
                // says, if longer).
                Some("slow_down") => {
                    interval = (interval + Duration::from_secs(5))
                        .max(e.retry_after().unwrap_or_default());
                }
                Some("expired_token") if answer_lost => bail!(
                    "the code is used up, perhaps by an approval whose answer never arrived: if this \
                     device is listed on the account, remove it there, then run `mica agent link --code` again"
                ),
                Some(_) => bail!("linking failed: {}", describe(&e)),
                // The server is unreachable for a moment: keep trying until the code expires.
                None => {
                    answer_lost = true;
                    eprintln!("polling for the approval: {}", describe(&e));
                }
            },
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the code expired before it was approved; run `mica agent link --code` again");
        }
    };
    let session = &linked["session"];
    let (Some(account_id), Some(access), Some(refresh)) = (
        session["account_id"].as_str(),
        session["access_token"].as_str(),
        session["refresh_token"].as_str(),
    ) else {
        bail!("the server's answer to linking is not understood: {linked}");
    };
    keep_link(
        cfg,
        &client.with_token(access),
        &linked,
        account_id,
        refresh,
    )
    .await
}

/// Refreshes this device's session. Holds `session.lock` in the data folder meanwhile, so two
/// processes of this device (the running agent's sync, `mica agent approve`) never spend one
/// refresh token twice: the server takes a second use for a stolen token and ends the session.
pub(crate) async fn refresh_session(
    cfg: &AgentConfig,
    client: &Client,
) -> anyhow::Result<mica_client::Tokens> {
    let dir = cfg.data_dir.clone();
    let _lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("session.lock"))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(f)
    })
    .await
    .context("locking the session")??;
    let device_file = cfg.data_dir.join("device.json");
    let mut linked: Linked = read_json(&device_file)?.context("the device is no longer linked")?;
    let tokens = client
        .refresh(&linked.refresh_token)
        .await
        .map_err(|e| anyhow::anyhow!("refreshing the session: {}", describe(&e)))?;
    linked.refresh_token = tokens.refresh_token.clone();
    write_json(&device_file, &linked)?;
    Ok(tokens)
}

/// `mica agent approve`: from this linked device, approves another device waiting with a user
/// code, after checking what it is. Approving needs a fresh factor: a TOTP code from
/// `MICA_AGENT_TOTP`, else a code sent to the account's email (or phone), read from standard
/// input.
pub async fn approve(cfg: &AgentConfig, user_code: &str) -> anyhow::Result<()> {
    if !cfg.data_dir.join("device.json").exists() {
        bail!("this device is not linked: only a linked device can approve another");
    }
    let client = Client::new(cfg.base());
    let tokens = refresh_session(cfg, &client).await?;
    let user = client.with_token(&tokens.access_token);
    let body = json!({ "user_code": user_code });
    let waiting: Value = user
        .raw(
            Method::POST,
            "/api/v1/devices/link-requests/lookup",
            Some(body.clone()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?
        .json()
        .await?;
    println!(
        "Waiting to be linked: \"{}\", {} ({}), asked from {} at {}.",
        waiting["name"].as_str().unwrap_or("?"),
        waiting["model"].as_str().unwrap_or("?"),
        waiting["os_version"].as_str().unwrap_or("?"),
        waiting["ip"].as_str().unwrap_or("?"),
        waiting["requested_at"].as_str().unwrap_or("?"),
    );
    if let Ok(totp) = std::env::var("MICA_AGENT_TOTP") {
        user.step_up_with_totp(&totp)
            .await
            .map_err(|e| anyhow::anyhow!("step-up failed: {}", describe(&e)))?;
    } else {
        // To the account's email, or to its phone when it has no email.
        let sent = match user.step_up_send("email").await {
            Err(e) if e.code() == Some("factor_missing") => user.step_up_send("sms").await,
            other => other,
        }
        .map_err(|e| anyhow::anyhow!("sending a step-up code: {}", describe(&e)))?;
        println!(
            "To confirm it is you, enter the code sent to {}:",
            sent.sent_to
        );
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        user.step_up_with_code(&sent.challenge_id, line.trim())
            .await
            .map_err(|e| anyhow::anyhow!("step-up failed: {}", describe(&e)))?;
    }
    user.raw(
        Method::POST,
        "/api/v1/devices/link-requests/approve",
        Some(body),
    )
    .await
    .map_err(|e| anyhow::anyhow!("approving failed: {}", describe(&e)))?;
    println!(
        "approved: \"{}\" is being linked to your account",
        waiting["name"].as_str().unwrap_or("?")
    );
    Ok(())
}

fn mask(account: &str) -> String {
    let n = account.chars().count();
    account
        .chars()
        .enumerate()
        .map(|(i, c)| if i < 2 || i + 2 >= n { c } else { '•' })
        .collect()
}

/// `mica agent status`: linked or not, and the activation lock as the server sees it.
pub async fn status(cfg: &AgentConfig) -> anyhow::Result<()> {
    let linked: Option<Linked> = read_json(&cfg.data_dir.join("device.json"))?;
    let marker: Option<Marker> = read_json(&cfg.state_file)?;
    match &linked {
        Some(l) => println!("linked: {} (account {})", l.device_id, mask(&l.account_id)),
        None => println!("linked: no"),
    }
    if let Some(m) = marker {
        println!("activation-lock marker: account {}", m.owner);
    }
    let client = Client::new(cfg.base());
    let resp = client
        .raw(
            Method::POST,
            "/api/v1/activation/status",
            Some(json!({ "hardware": cfg.hardware() })),
        )
        .await
        .map_err(|e| anyhow::anyhow!("activation status: {}", describe(&e)))?;
    let v: Value = resp.json().await?;
    if v["locked"] == json!(true) {
        println!(
            "activation lock: on, bound to account {}",
            v["owner"].as_str().unwrap_or("?")
        );
    } else {
        println!("activation lock: off");
    }
    Ok(())
}

/// `mica agent unlock`: leaves lost mode with the account password.
pub async fn unlock(cfg: &AgentConfig) -> anyhow::Result<()> {
    let Some(linked) = read_json::<Linked>(&cfg.data_dir.join("device.json"))? else {
        bail!("this device is not linked");
    };
    let lost = cfg.data_dir.join("lost_mode.json");
    if !lost.exists() {
        println!("this device is not in lost mode");
        return Ok(());
    }
    let device = Client::new(cfg.base()).with_token(&linked.credential);
    let pw = password()?;
    device
        .raw(
            Method::POST,
            "/api/v1/device/lost-mode/exit",
            Some(json!({ "password": pw })),
        )
        .await
        .map_err(|e| anyhow::anyhow!("unlocking failed: {}", describe(&e)))?;
    std::fs::remove_file(&lost)?;
    if let Some(h) = &cfg.hooks.unlock {
        if let Err(e) = run_hook(h, vec![]).await {
            eprintln!("unlock hook: {e}");
        }
    }
    println!("lost mode ended");
    Ok(())
}

/// The running agent's shared state.
struct Agent {
    cfg: AgentConfig,
    linked: Linked,
    device: Client,
    journal: Mutex<Journal>,
    /// The ring going on, if any: its command id, and what stops it, with the reason (dropping
    /// it stops it too).
    ringing: std::sync::Mutex<Option<(String, tokio::sync::oneshot::Sender<&'static str>)>>,
    /// The newest ring's task (it records and reports how the ring ended).
    ring_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Wakes the location reports (lost mode began: report now, and more often).
    reports: tokio::sync::Notify,
    /// The notices of this run, by id.
    notices: std::sync::Mutex<HashMap<String, NoticeState>>,
}

impl Agent {
    /// Whether `id` is the ring going on now.
    fn is_ringing(&self, id: &str) -> bool {
        self.ringing
            .lock()
            .is_ok_and(|r| r.as_ref().is_some_and(|(rid, _)| rid == id))
    }

    /// Stops the ring going on, saying why; whether there was one.
    fn stop_ring(&self, why: &'static str) -> bool {
        let ring = self.ringing.lock().ok().and_then(|mut r| r.take());
        match ring {
            Some((_, stop)) => {
                let _ = stop.send(why);
                true
            }
            None => false,
        }
    }
}

/// `mica agent stop-ring`: stops the running agent's ring, as a person holding the device would.
pub async fn stop_ring(cfg: &AgentConfig) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let path = cfg.data_dir.join(CONTROL_SOCKET);
    let mut conn = tokio::net::UnixStream::connect(&path)
        .await
        .with_context(|| format!("the agent is not running ({})", path.display()))?;
    conn.write_all(b"stop-ring\n").await?;
    let mut answer = String::new();
    tokio::io::BufReader::new(conn)
        .read_line(&mut answer)
        .await?;
    match answer.trim() {
        "stopped" => println!("the ring is stopped"),
        "not ringing" => println!("the device is not ringing"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
    Ok(())
}

/// Serves the control socket: one line in, one line out.
async fn control_loop(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let (read, mut write) = conn.into_split();
            let mut line = String::new();
            let mut read = tokio::io::BufReader::new(read);
            if read.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match line.trim() {
                "stop-ring" if agent.stop_ring("stopped on the device") => "stopped\n",
                "stop-ring" => "not ringing\n",
                _ => "unknown request\n",
            };
            let _ = write.write_all(answer.as_bytes()).await;
        });
    }
}

/// Opens the control socket in the data folder, only for this user.
fn control_socket(data_dir: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(CONTROL_SOCKET);
    // A socket left by an agent that stopped; a running one is found by connecting.
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another agent runs on this data folder",
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Kills a ring hook's process group and reaps the hook.
fn silence(child: &mut std::process::Child) {
    use rustix::process::{kill_process_group, Pid, Signal};
    if kill_process_group(Pid::from_child(child), Signal::KILL).is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Why a ring stopped early: what its stop said, or (dropped unsent) the agent stopping.
fn stopped_by(r: Result<&'static str, tokio::sync::oneshot::error::RecvError>) -> &'static str {
    r.unwrap_or("the agent stopped")
}

/// Rings until stopped on the device, replaced by a newer ring, or `ring_for_secs` are up;
/// then reports how it went. The owner sees the command acknowledged while it rings, and done
/// once it ends.
async fn ring(
    agent: Arc<Agent>,
    id: String,
    seq: i64,
    hook: String,
    mut stop: tokio::sync::oneshot::Receiver<&'static str>,
) {
    let until = tokio::time::Instant::now() + Duration::from_secs(agent.cfg.hooks.ring_for_secs);
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    let result = 'ring: loop {
        let round = tokio::time::Instant::now() + RING_ROUND;
        // In a process group of its own, so that stopping the ring stops whatever the hook
        // started too (a player it runs, a loop).
        let mut child = match hook_command(&hook)
            .env("MICA_COMMAND_ID", &id)
            .process_group(0)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => break Err(format!("cannot run the hook: {e}")),
        };
        // The sound plays until it ends, or the ring is stopped or over.
        loop {
            tokio::select! {
                _ = poll.tick() => match child.try_wait() {
                    Ok(Some(s)) if s.success() => break,
                    Ok(Some(s)) => break 'ring Err(format!("the hook exited with {s}")),
                    Ok(None) => {}
                    Err(e) => break 'ring Err(format!("waiting for the hook: {e}")),
                },
                r = &mut stop => {
                    silence(&mut child);
                    break 'ring Ok(stopped_by(r));
                }
                _ = tokio::time::sleep_until(until) => {
                    silence(&mut child);
                    break 'ring Ok("its time is up");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(round.min(until)) => {}
            r = &mut stop => break Ok(stopped_by(r)),
        }
        if tokio::time::Instant::now() >= until {
            break Ok("its time is up");
        }
    };
    if let Ok(mut r) = agent.ringing.lock() {
        if r.as_ref().is_some_and(|(rid, _)| *rid == id) {
            *r = None;
        }
    }
    let state = match &result {
        Ok(why) => {
            tracing::info!(command = %id, "the ring ended: {why}");
            "done".to_owned()
        }
        Err(e) => {
            tracing::warn!(command = %id, error = %e, "the ring failed");
            format!("failed: {e}")
        }
    };
    agent.record(&id, seq, &state).await;
    agent.report(&id, &state).await;
}

/// Why the agent's tasks stop.
enum Ending {
    /// The server no longer knows the credential.
    Unlinked,
    /// The owner's erase, acknowledged: the run erases once the other tasks stopped.
    Erase { id: String, seq: i64 },
}

/// How a run of the agent ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The owner erased the device.
    Erased,
    /// The server no longer knows the credential (the device was removed).
    Unlinked,
}

/// `mica agent run`: the channel, the commands, the reports, the sync.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<RunEnd> {
    if let Err(e) = settle_erase(&cfg).await {
        tracing::warn!(error = %e, "reporting an earlier erase");
    }
    let Some(linked) = read_json::<Linked>(&cfg.data_dir.join("device.json"))? else {
        let marker: Option<Marker> = read_json(&cfg.state_file)?;
        match marker {
            Some(m) => bail!(
                "this device is not linked; it was bound to account {} — link it with `mica agent link` (the activation lock may require that account)",
                m.owner
            ),
            None => bail!("this device is not linked: run `mica agent link` first"),
        }
    };
    let journal = read_json::<Journal>(&cfg.data_dir.join("journal.json"))?.unwrap_or_default();
    let agent = Arc::new(Agent {
        device: Client::new(cfg.base()).with_token(&linked.credential),
        cfg,
        linked,
        journal: Mutex::new(journal),
        ringing: std::sync::Mutex::new(None),
        ring_task: std::sync::Mutex::new(None),
        reports: tokio::sync::Notify::new(),
        notices: std::sync::Mutex::new(HashMap::new()),
    });
    let control = control_socket(&agent.cfg.data_dir).with_context(|| {
        format!(
            "opening {}",
            agent.cfg.data_dir.join(CONTROL_SOCKET).display()
        )
    })?;
    // Lost mode survives restarts: lock again before anything else.
    if let Some(lost) = read_json::<Value>(&agent.cfg.data_dir.join("lost_mode.json"))? {
        if let Some(h) = &agent.cfg.hooks.lock {
            if let Err(e) = run_hook(h, lost_env(&lost)).await {
                tracing::warn!(error = %e, "lock hook");
            }
        }
    }
    let (tx, rx) = mpsc::channel::<Value>(64);
    let (end_tx, mut end_rx) = mpsc::channel::<Ending>(1);
    let executor = tokio::spawn(execute(agent.clone(), rx, end_tx.clone()));
    let channel = tokio::spawn(channel_loop(agent.clone(), tx, end_tx));
    let reporter = tokio::spawn(report_loop(agent.clone()));
    let sync = tokio::spawn(sync_loop(agent.clone()));
    let control = tokio::spawn(control_loop(agent.clone(), control));
    let end = end_rx.recv().await.unwrap_or(Ending::Unlinked);
    // Every task ends before anything else happens (an erase must not race a sync round or a
    // ring writing into the data folder).
    for t in [executor, channel, reporter, sync, control] {
        t.abort();
        let _ = t.await;
    }
    agent.stop_ring("the agent stopped");
    let ring = agent.ring_task.lock().ok().and_then(|mut t| t.take());
    if let Some(mut ring) = ring {
        // It records and reports how it ended; a report that cannot get through is cut short.
        if tokio::time::timeout(Duration::from_secs(10), &mut ring)
            .await
            .is_err()
        {
            ring.abort();
            let _ = ring.await;
        }
    }
    let _ = std::fs::remove_file(agent.cfg.data_dir.join(CONTROL_SOCKET));
    match end {
        Ending::Unlinked => Ok(RunEnd::Unlinked),
        Ending::Erase { id, seq } => erase_device(&agent, &id, seq).await,
    }
}

fn lost_env(lost: &Value) -> Vec<(&'static str, String)> {
    vec![
        (
            "MICA_LOST_MESSAGE",
            lost["message"].as_str().unwrap_or_default().to_owned(),
        ),
        (
            "MICA_LOST_PHONE",
            lost["phone"].as_str().unwrap_or_default().to_owned(),
        ),
    ]
}

/// How one connection of the command channel ended.
enum Attempt {
    /// It dropped or went silent (after the server's `hello` or not): connect again.
    Reconnect { opened: bool },
    /// The server (or a proxy) refused it with this status: connect again later, no sooner
    /// than its `Retry-After`.
    Refused { retry_after: Option<Duration> },
    /// The server no longer accepts the device's credential.
    Unlinked,
    /// The server (or a proxy in front of it) answered without switching to a WebSocket.
    NoUpgrade,
}

/// Keeps the command channel open — a WebSocket, or Server-Sent Events when so configured or
/// when the way to the server does not pass the upgrade — and hands each command frame to the
/// executor.
async fn channel_loop(agent: Arc<Agent>, tx: mpsc::Sender<Value>, end: mpsc::Sender<Ending>) {
    let http = reqwest::Client::builder()
        .user_agent(concat!("mica-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let path = "/api/v1/device/command-channel";
    let ws_url = format!("{}{path}", ws_base(&agent.cfg.base()));
    let sse_url = format!("{}{path}", agent.cfg.base());
    let silence = Duration::from_secs(agent.cfg.silence_secs.max(1));
    let mut sse = agent.cfg.channel == ChannelKind::Sse;
    let mut failures: u32 = 0;
    let mut not_before: Option<Duration> = None;
    loop {
        let result = if sse {
            sse_attempt(&agent, &http, &sse_url, silence, &tx).await
        } else {
            ws_attempt(&agent, &ws_url, silence, &tx).await
        };
        match result {
            Ok(Attempt::Unlinked) => {
                tracing::warn!("the server no longer accepts this device's credential");
                let _ = end.send(Ending::Unlinked).await;
                return;
            }
            Ok(Attempt::NoUpgrade) => {
                tracing::warn!(
                    "the server answered without switching to a WebSocket (a proxy in front of \
                     it may drop the Upgrade header); using Server-Sent Events instead"
                );
                sse = true;
                continue;
            }
            // A channel that was open starts the back-off over; one that never opened (refused,
            // dropped before its `hello`) counts as a failure, so a server in trouble is not
            // asked again every second by every device.
            Ok(Attempt::Reconnect { opened: true }) => failures = 1,
            Ok(Attempt::Reconnect { opened: false }) => failures = failures.saturating_add(1),
            Ok(Attempt::Refused { retry_after }) => {
                failures = failures.saturating_add(1);
                not_before = retry_after.map(|d| d.min(Duration::from_secs(3600)));
            }
            Err(e) => {
                tracing::info!(error = %e, "command channel dropped");
                failures = failures.saturating_add(1);
            }
        }
        // Full jitter: a fleet of devices that lost the server together does not return as
        // one wave.
        let cap = Duration::from_millis(500u64.saturating_mul(1 << failures.min(6)))
            .min(Duration::from_secs(30));
        let wait = rand::thread_rng()
            .gen_range(Duration::from_millis(100)..=cap.max(Duration::from_millis(101)));
        tokio::time::sleep(wait.max(not_before.take().unwrap_or_default())).await;
    }
}

/// One WebSocket connection of the command channel, read until it ends.
async fn ws_attempt(
    agent: &Agent,
    url: &str,
    silence: Duration,
    tx: &mpsc::Sender<Value>,
) -> anyhow::Result<Attempt> {
    let mut req = url.into_client_request()?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", agent.linked.credential))?;
    req.headers_mut().insert(AUTHORIZATION, auth);
    req.headers_mut().insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("mica-agent/", env!("CARGO_PKG_VERSION"))),
    );
    let connecting = tokio_tungstenite::connect_async(req);
    let mut ws = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Err(_) => bail!("connecting timed out"),
        Ok(Err(WsError::Http(resp))) if resp.status().as_u16() == 401 => {
            return Ok(Attempt::Unlinked)
        }
        Ok(Err(WsError::Http(resp))) if resp.status().is_success() => {
            return Ok(Attempt::NoUpgrade)
        }
        Ok(Err(WsError::Http(resp))) => {
            tracing::warn!(status = %resp.status(), "the command channel was refused");
            return Ok(Attempt::Refused {
                retry_after: retry_after(resp.headers()),
            });
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok((ws, _))) => ws,
    };
    let mut opened = false;
    loop {
        // The server pings every 25 s; pongs go out with the next read.
        match tokio::time::timeout(silence, ws.next()).await {
            Err(_) => {
                tracing::info!("the command channel went silent; reconnecting");
                return Ok(Attempt::Reconnect { opened });
            }
            Ok(Some(Ok(WsMessage::Text(text)))) => {
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                match v["type"].as_str() {
                    Some("hello") => {
                        opened = true;
                        tracing::info!("command channel open (WebSocket)");
                    }
                    Some("command") => {
                        let _ = tx.send(v).await;
                    }
                    Some("notice") => {
                        let _ = tx.send(v).await;
                    }
                    _ => {}
                }
            }
            Ok(Some(Ok(WsMessage::Close(_))) | None) => return Ok(Attempt::Reconnect { opened }),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
        }
    }
}

/// One Server-Sent Events connection of the command channel, read until it ends.
async fn sse_attempt(
    agent: &Agent,
    http: &reqwest::Client,
    url: &str,
    silence: Duration,
    tx: &mpsc::Sender<Value>,
) -> anyhow::Result<Attempt> {
    let mut resp = http
        .get(url)
        .bearer_auth(&agent.linked.credential)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Ok(Attempt::Unlinked);
    }
    if !resp.status().is_success() {
        tracing::warn!(status = %resp.status(), "the command channel was refused");
        return Ok(Attempt::Refused {
            retry_after: retry_after(resp.headers()),
        });
    }
    let mut parser = SseParser::default();
    let mut opened = false;
    loop {
        match tokio::time::timeout(silence, resp.chunk()).await {
            Err(_) => {
                tracing::info!("the command channel went silent; reconnecting");
                return Ok(Attempt::Reconnect { opened });
            }
            Ok(Ok(Some(bytes))) => {
                for (event, data) in parser.feed(&bytes) {
                    if event == "hello" {
                        opened = true;
                        tracing::info!("command channel open (Server-Sent Events)");
                    } else if event == "command" {
                        if let Ok(v) = serde_json::from_str::<Value>(&data) {
                            let _ = tx.send(v).await;
                        }
                    } else if event == "notice" {
                        if let Ok(mut v) = serde_json::from_str::<Value>(&data) {
                            v["type"] = "notice".into();
                            let _ = tx.send(v).await;
                        }
                    }
                }
            }
            Ok(Ok(None)) => return Ok(Attempt::Reconnect { opened }),
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// A refusal's `Retry-After`, in seconds (the form Mica and most proxies send).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Splits a Server-Sent Events stream into `(event, data)` pairs.
#[derive(Default)]
struct SseParser {
    buf: String,
    event: String,
    data: String,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(i) = self.buf.find('\n') {
            let line: String = self.buf.drain(..=i).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    let data = std::mem::take(&mut self.data);
                    out.push((
                        if event.is_empty() {
                            "message".into()
                        } else {
                            event
                        },
                        data,
                    ));
                }
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = v.trim_start().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        out
    }
}

/// `http://…` → `ws://…`, `https://…` → `wss://…`.
fn ws_base(base: &str) -> String {
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

impl Agent {
    /// Records a command's state in the journal and saves it, still holding the journal (so
    /// two records reach the disk in the order they were made); whether it was saved.
    async fn record(&self, id: &str, seq: i64, state: &str) -> bool {
        let mut j = self.journal.lock().await;
        j.entries.insert(id.to_owned(), (seq, state.to_owned()));
        // Keep the newest few hundred.
        while j.entries.len() > 500 {
            let oldest = j
                .entries
                .iter()
                .min_by_key(|(_, (s, _))| *s)
                .map(|(k, (s, _))| (k.clone(), *s));
            let Some((k, s)) = oldest else { break };
            j.entries.remove(&k);
            j.forgotten_upto = j.forgotten_upto.max(s);
        }
        match write_json(&self.cfg.data_dir.join("journal.json"), &*j) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, command = id, "saving the command journal");
                false
            }
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<reqwest::Response, ClientError> {
        self.device.raw(Method::POST, path, Some(body)).await
    }

    /// Notes in the state file that erase `id` is to be reported, and whether its wipe
    /// finished (see [`ErasedReport`]).
    fn remember_erase(&self, id: &str, wiped: bool, failed: Option<String>) -> anyhow::Result<()> {
        let mut marker = read_json::<Marker>(&self.cfg.state_file)?.unwrap_or(Marker {
            locked: false,
            owner: mask(&self.linked.account_id),
            device_id: self.linked.device_id.clone(),
            erased: None,
        });
        marker.erased = Some(ErasedReport {
            command: id.to_owned(),
            credential: self.linked.credential.clone(),
            wiped,
            failed,
        });
        write_json(&self.cfg.state_file, &marker)
    }

    fn forget_erase(&self) {
        if let Ok(Some(mut marker)) = read_json::<Marker>(&self.cfg.state_file) {
            marker.erased = None;
            if let Err(e) = write_json(&self.cfg.state_file, &marker) {
                tracing::warn!(error = %e, "updating the state file");
            }
        }
    }

    /// Reports how a command ended, retrying a few times; whether the server answered (took
    /// it, or refused it for good).
    async fn report(&self, id: &str, state: &str) -> bool {
        // The server takes a reason of up to 500 characters (a hook's output can be longer).
        let (outcome, reason) = match state.strip_prefix("failed: ") {
            Some(r) => ("failed", Some(r.chars().take(500).collect::<String>())),
            None => ("done", None),
        };
        let body = json!({ "outcome": outcome, "reason": reason });
        for attempt in 0..5u32 {
            match self
                .post(
                    &format!("/api/v1/device/commands/{id}/result"),
                    body.clone(),
                )
                .await
            {
                Ok(_) => return true,
                Err(ClientError::Api { status, .. }) if refused_for_good(status) => {
                    tracing::info!(command = id, %status, "result not taken");
                    return true;
                }
                Err(e) => {
                    tracing::info!(command = id, error = %e, "reporting a result failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt + 1))).await;
                }
            }
        }
        false
    }

    async fn locate(&self) -> Result<(), String> {
        let place = locate(&self.cfg.location).await?;
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| e.to_string())?;
        let body = json!({ "locations": [{
            "lat": place.0, "lon": place.1, "accuracy": place.2, "source": place.3,
            "battery": battery(), "at": at,
        }]});
        self.post("/api/v1/device/locations", body)
            .await
            .map(|_| ())
            .map_err(|e| format!("reporting the location: {}", describe(&e)))
    }
}

/// Acknowledges a command before it runs; whether to run it now.
///
/// The journal says `acking` before the acknowledgement goes out. When its answer is lost (the
/// connection dropped after the server took it), the device asks again: the server's
/// `command_already_acknowledged` then means its own acknowledgement landed, and — the journal
/// saying `acking`, not `started` — the command has not run, so it runs now. Without that
/// record (a journal lost since), whether it ran is unknown, and at most once means not now.
async fn acknowledge(agent: &Agent, id: &str, seq: i64, mut own: bool) -> bool {
    if !agent.record(id, seq, "acking").await {
        // Not acknowledged: the server sends it again.
        return false;
    }
    for attempt in 0..4u32 {
        match agent
            .post(&format!("/api/v1/device/commands/{id}/ack"), json!({}))
            .await
        {
            Ok(_) => return true,
            Err(ClientError::Api { code, .. }) if code == "command_expired" => {
                tracing::info!(command = %id, "expired before it could run; not running it");
                agent.record(id, seq, "expired").await;
                return false;
            }
            Err(ClientError::Api { code, .. }) if code == "command_already_acknowledged" => {
                if own {
                    tracing::info!(command = %id, "the server had this device's acknowledgement");
                    return true;
                }
                let state = "failed: acknowledged before without a record of running it";
                agent.record(id, seq, state).await;
                agent.report(id, state).await;
                return false;
            }
            Err(ClientError::Api { status, code, .. }) if status.is_client_error() => {
                tracing::info!(command = %id, code, "the server refused the acknowledgement");
                return false;
            }
            Err(e) => {
                // Sent, perhaps taken, no answer: asked again, an acknowledgement already
                // there is this one.
                own = true;
                tracing::info!(command = %id, error = %e, "acknowledging failed; retrying");
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
        }
    }
    // The server sends it again; the journal still says `acking`.
    false
}

/// Runs commands one after another, each at most once.
async fn execute(agent: Arc<Agent>, mut rx: mpsc::Receiver<Value>, end: mpsc::Sender<Ending>) {
    while let Some(frame) = rx.recv().await {
        if frame["type"].as_str() == Some("notice") {
            show_notice(&agent, frame);
            continue;
        }
        let id = frame["id"].as_str().unwrap_or_default().to_owned();
        let seq = frame["seq"].as_i64().unwrap_or(0);
        let kind = frame["kind"].as_str().unwrap_or_default().to_owned();
        if id.is_empty() {
            continue;
        }
        let (seen, forgotten_upto) = {
            let j = agent.journal.lock().await;
            (j.entries.get(&id).map(|(_, s)| s.clone()), j.forgotten_upto)
        };
        // This device sent its acknowledgement and never heard back: the server may hold it.
        let own_ack = seen.as_deref() == Some("acking");
        if let Some(state) = seen.filter(|_| !own_ack) {
            // Sent again (a lost acknowledgement, a reconnect): never run twice.
            if agent.is_ringing(&id) {
                continue;
            }
            match state.as_str() {
                "started" => {
                    let state = "failed: the device stopped while running it";
                    agent.record(&id, seq, state).await;
                    agent.report(&id, state).await;
                }
                "expired" => {}
                s => {
                    let s = s.to_owned();
                    agent.report(&id, &s).await;
                }
            }
            continue;
        }
        if !own_ack {
            if seq <= forgotten_upto {
                tracing::warn!(command = %id, seq, "refusing a command older than the journal remembers (a replay)");
                continue;
            }
            if frame["acknowledged"] == json!(true) {
                // Acknowledged by this device before its journal was lost: do not guess.
                let state = "failed: the device lost track of it";
                agent.record(&id, seq, state).await;
                agent.report(&id, state).await;
                continue;
            }
        }
        // The server already holds this device's own acknowledgement: it only has to run.
        let acked = own_ack && frame["acknowledged"] == json!(true);
        if !acked && !acknowledge(&agent, &id, seq, own_ack).await {
            continue;
        }
        if !agent.record(&id, seq, "started").await {
            // Run without a record, it could run again after a crash: not run.
            agent
                .report(&id, "failed: the device could not save its command journal")
                .await;
            continue;
        }
        tracing::info!(command = %id, kind, "running");
        let result = match kind.as_str() {
            "locate" => agent.locate().await,
            "ring" => match &agent.cfg.hooks.ring {
                Some(h) => {
                    // It rings on its own while other commands run; a newer ring replaces it
                    // (the one it replaces ends, done).
                    agent.stop_ring("a newer ring replaced it");
                    let (stop, stopped) = tokio::sync::oneshot::channel();
                    if let Ok(mut r) = agent.ringing.lock() {
                        *r = Some((id.clone(), stop));
                    }
                    let task =
                        tokio::spawn(ring(agent.clone(), id.clone(), seq, h.clone(), stopped));
                    if let Ok(mut t) = agent.ring_task.lock() {
                        *t = Some(task);
                    }
                    continue;
                }
                None => Err("no ring hook is configured".into()),
            },
            "lost_mode" => {
                let lost = json!({ "message": frame["message"], "phone": frame["phone"] });
                match write_json(&agent.cfg.data_dir.join("lost_mode.json"), &lost) {
                    Err(e) => Err(format!("saving lost mode: {e}")),
                    Ok(()) => match &agent.cfg.hooks.lock {
                        Some(h) => {
                            let mut env = lost_env(&lost);
                            env.push(("MICA_COMMAND_ID", id.clone()));
                            run_hook(h, env).await
                        }
                        None => Err("no lock hook is configured".into()),
                    },
                }
            }
            "erase" => {
                // The agent's other tasks stop before the wipe (they write into the data
                // folder): the run itself erases.
                let _ = end.send(Ending::Erase { id, seq }).await;
                return;
            }
            other => Err(format!("this agent does not know the command {other:?}")),
        };
        let state = match result {
            Ok(()) => "done".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
        agent.record(&id, seq, &state).await;
        agent.report(&id, &state).await;
        if kind == "lost_mode" {
            // The server holds the device lost once it has the result: where it is now is
            // news to its owner, and the reports come more often from here on.
            agent.reports.notify_one();
        }
    }
}

/// Erases the device, every other task of the agent stopped: notes the erase outside the
/// data folder (the wipe takes the credential with it), runs the erase hook, wipes the folder,
/// and reports.
async fn erase_device(agent: &Agent, id: &str, seq: i64) -> anyhow::Result<RunEnd> {
    if let Err(e) = agent.remember_erase(id, false, None) {
        tracing::warn!(error = %e, "keeping the erase to report");
    }
    match erase(&agent.cfg).await {
        Ok(()) => {
            if let Err(e) = agent.remember_erase(id, true, None) {
                tracing::warn!(error = %e, "noting the wipe done");
            }
            if agent.report(id, "done").await {
                agent.forget_erase();
            }
            println!("erased: the data folder is wiped and the device unlinked");
            Ok(RunEnd::Erased)
        }
        Err(e) => {
            let state = format!("failed: {e}");
            agent.record(id, seq, &state).await;
            // Until the server has the failure, the state file keeps it — to report, not to
            // erase again.
            if let Err(err) = agent.remember_erase(id, false, Some(e.chars().take(500).collect())) {
                tracing::warn!(error = %err, "keeping the erase's failure to report");
            }
            if agent.report(id, &state).await {
                agent.forget_erase();
            }
            bail!("the erase failed: {e}")
        }
    }
}

/// Runs the erase hook, then wipes the data folder (the state file, outside it, stays).
async fn erase(cfg: &AgentConfig) -> Result<(), String> {
    let dir = &cfg.data_dir;
    if let Some(h) = &cfg.hooks.erase {
        run_hook(h, vec![("MICA_DATA_DIR", dir.display().to_string())]).await?;
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let p = entry.path();
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|e| format!("wiping {}: {e}", p.display()))?;
    }
    Ok(())
}

/// The battery level, when the machine has one.
fn battery() -> Option<i64> {
    let dir = std::fs::read_dir("/sys/class/power_supply").ok()?;
    for e in dir.flatten() {
        if let Ok(s) = std::fs::read_to_string(e.path().join("capacity")) {
            if let Ok(v) = s.trim().parse::<i64>() {
                return Some(v.clamp(0, 100));
            }
        }
    }
    None
}

/// Where the device is: `(lat, lon, accuracy, source)`.
async fn locate(cfg: &LocationConfig) -> Result<(f64, f64, f64, &'static str), String> {
    match cfg.source.as_str() {
        "fixed" => match (cfg.lat, cfg.lon) {
            (Some(lat), Some(lon)) => Ok((lat, lon, cfg.accuracy.unwrap_or(10.0), "gps")),
            _ => Err("the fixed location needs lat and lon".into()),
        },
        "command" => {
            let cmd = cfg
                .command
                .clone()
                .ok_or("the command location source needs a command")?;
            let out = tokio::task::spawn_blocking(move || hook_command(&cmd).output())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("running the location command: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let nums: Vec<f64> = text
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter_map(|s| s.parse().ok())
                .collect();
            match nums.as_slice() {
                [lat, lon] => Ok((*lat, *lon, cfg.accuracy.unwrap_or(100.0), "network")),
                [lat, lon, acc, ..] => Ok((*lat, *lon, *acc, "network")),
                _ => Err(format!(
                    "the location command printed {text:?}, not `lat lon [accuracy]`"
                )),
            }
        }
        "geoclue" => {
            let cmd = cfg
                .command
                .clone()
                .unwrap_or_else(|| "/usr/libexec/geoclue-2.0/demos/where-am-i -t 20".into());
            let out = tokio::task::spawn_blocking(move || hook_command(&cmd).output())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("asking GeoClue: {e}"))?;
            parse_where_am_i(&String::from_utf8_lossy(&out.stdout))
                .ok_or_else(|| "GeoClue gave no position".into())
        }
        other => Err(format!(
            "unknown location source {other:?}: use fixed, command or geoclue"
        )),
    }
}

/// Reads GeoClue's `where-am-i` output (`Latitude: 52.52°`, `Longitude: …`, `Accuracy: 25
/// meters`).
fn parse_where_am_i(text: &str) -> Option<(f64, f64, f64, &'static str)> {
    let field = |name: &str| {
        text.lines()
            .rev()
            .filter_map(|l| l.trim().strip_prefix(name))
            .filter_map(|rest| {
                rest.trim_start_matches(':')
                    .split_whitespace()
                    .next()
                    .map(|v| v.trim_end_matches('°').to_owned())
            })
            .filter_map(|v| v.parse::<f64>().ok())
            .next()
    };
    Some((
        field("Latitude")?,
        field("Longitude")?,
        field("Accuracy").unwrap_or(1000.0),
        "network",
    ))
}

/// Reports the location periodically (and a heartbeat with the battery level) — more often
/// while in lost mode, starting the moment it begins.
async fn report_loop(agent: Arc<Agent>) {
    let cfg = &agent.cfg.location;
    loop {
        let lost = agent.cfg.data_dir.join("lost_mode.json").exists();
        let every = match (lost, cfg.lost_interval_secs, cfg.interval_secs) {
            (true, l, 0) if l > 0 => l,
            (true, l, usual) if l > 0 => l.min(usual),
            (_, _, usual) => usual,
        };
        if every > 0 {
            if let Err(e) = agent.locate().await {
                tracing::info!(error = %e, "location report");
            }
        } else {
            let _ = agent
                .post("/api/v1/device/heartbeat", json!({ "battery": battery() }))
                .await;
        }
        let pause = Duration::from_secs(if every > 0 { every } else { 300 });
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = agent.reports.notified() => {}
        }
    }
}

/// Mirrors the synced categories' default collections into `data_dir/sync`.
async fn sync_loop(agent: Arc<Agent>) {
    if agent.cfg.sync.categories.is_empty() {
        return;
    }
    loop {
        if let Err(e) = sync_once(&agent).await {
            tracing::info!(error = %e, "sync");
        }
        tokio::time::sleep(Duration::from_secs(agent.cfg.sync.interval_secs.max(5))).await;
    }
}

/// A category's default collection as this device last synced it.
#[derive(Default, Serialize, Deserialize)]
struct Mirror {
    token: Option<String>,
    items: BTreeMap<String, Mirrored>,
    /// Random, made with the mirror: this mirror's pushes' idempotency keys are its own.
    #[serde(default)]
    origin: String,
    /// Pushes the server has answered: a later batch with the same writes (an item created
    /// again as it was first made) is a new batch, not a retry.
    #[serde(default)]
    pushed: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Mirrored {
    version: String,
    body: Value,
}

/// One sync round: local changes go up first — each based on the version this device last saw,
/// so an item changed meanwhile elsewhere is a conflict, not an overwrite — then everything new
/// comes down.
///
/// Local changes are files in `data_dir/sync/outgoing/<category>/`: `<id>.json` (the item's new
/// body) or `<id>.delete`. Each is removed once the server took it; one that conflicts moves to
/// `data_dir/sync/conflicts/<category>/` for the person to look at, and the mirror takes the
/// server's item.
async fn sync_once(agent: &Agent) -> anyhow::Result<()> {
    let client = Client::new(agent.cfg.base());
    let tokens = refresh_session(&agent.cfg, &client).await?;
    let user = client.with_token(&tokens.access_token);
    let sync = agent.cfg.data_dir.join("sync");
    // One category in trouble does not hold back the others.
    for category in &agent.cfg.sync.categories {
        if let Err(e) = sync_category(&user, &sync, category).await {
            tracing::info!(category, error = %e, "sync");
        }
    }
    Ok(())
}

async fn sync_category(user: &Client, sync: &Path, category: &str) -> anyhow::Result<()> {
    {
        let path = sync.join(format!("{category}.json"));
        let mut mirror: Mirror = read_json(&path)?.unwrap_or_default();
        if mirror.origin.is_empty() {
            mirror.origin = format!("{:016x}", rand::random::<u64>());
        }
        // The origin is on disk before the first push uses it (a retry after a crash must
        // send the same key).
        write_json(&path, &mirror)?;
        // A push that did not get through ends the category's round: a pull now would move
        // the mirror's versions under edits still waiting, and the next push would overwrite
        // another device's change instead of reporting the conflict.
        let pushed = push_outgoing(user, sync, category, &mut mirror).await;
        write_json(&path, &mirror)?;
        pushed?;
        loop {
            let page = match user.pull(category, mirror.token.as_deref(), None).await {
                Ok(p) => p,
                Err(ClientError::Api { status, .. }) if status.as_u16() == 404 => break,
                Err(ClientError::Api { status, .. }) if status.as_u16() == 410 => {
                    // The token expired: start over (the mirror's origin and push count stay,
                    // so its idempotency keys stay its own).
                    mirror = Mirror {
                        origin: std::mem::take(&mut mirror.origin),
                        pushed: mirror.pushed,
                        ..Mirror::default()
                    };
                    continue;
                }
                Err(e) => bail!("pulling {category}: {}", describe(&e)),
            };
            for change in page.changes {
                mirror_change(&mut mirror, change);
            }
            mirror.token = Some(page.token);
            if !page.more {
                break;
            }
        }
        write_json(&path, &mirror)?;
    }
    Ok(())
}

/// Applies an item as the server has it (a pulled change, or a conflict's `current`).
fn mirror_change(mirror: &mut Mirror, item: Change) {
    if item.deleted {
        mirror.items.remove(&item.id);
    } else {
        mirror.items.insert(
            item.id,
            Mirrored {
                version: item.version,
                body: item.body.unwrap_or(Value::Null),
            },
        );
    }
}

/// A local change on its way up: the write, and the file it came from with the bytes read,
/// so a file edited again meanwhile is kept for the next round instead of removed.
struct Outgoing {
    id: String,
    name: String,
    body: Option<Value>,
    bytes: Vec<u8>,
    write: Value,
}

/// Pushes the category's local changes as one batch (at most 500 files a round). A batch the
/// server refuses for what one of its writes holds (a 4xx: an invalid body, one too large) is
/// sent again a write at a time, and the writes refused alone move to `sync/rejected/` — one
/// bad file does not hold back the rest for ever.
async fn push_outgoing(
    user: &Client,
    sync: &Path,
    category: &str,
    mirror: &mut Mirror,
) -> anyhow::Result<()> {
    let dir = sync.join("outgoing").join(category);
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    names.sort();
    names.truncate(500);
    let mut batch = Vec::new();
    for name in names {
        let file = dir.join(&name);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        if let Some(id) = name.strip_suffix(".json") {
            let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
                set_aside(sync, "rejected", category, &dir, &name)?;
                tracing::warn!(category, id, "not JSON; kept in sync/rejected");
                continue;
            };
            let base = mirror.items.get(id).map(|m| m.version.clone());
            batch.push(Outgoing {
                id: id.to_owned(),
                name: name.clone(),
                write: json!({ "id": id, "op": "put", "base_version": base, "body": body }),
                body: Some(body),
                bytes,
            });
        } else if let Some(id) = name.strip_suffix(".delete") {
            match mirror.items.get(id) {
                Some(m) => batch.push(Outgoing {
                    id: id.to_owned(),
                    name: name.clone(),
                    write: json!({ "id": id, "op": "delete", "base_version": m.version }),
                    body: None,
                    bytes,
                }),
                // Not on the server (as far as this device knows): nothing to delete.
                None => std::fs::remove_file(&file)?,
            }
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    match push_batch(user, category, mirror, &batch).await {
        Ok(results) => settle(sync, category, &dir, mirror, batch, results),
        Err(ClientError::Api { status, .. }) if refused_for_content(status) => {
            // Which write the server minded: each alone.
            for out in batch {
                match push_batch(user, category, mirror, std::slice::from_ref(&out)).await {
                    Ok(results) => settle(sync, category, &dir, mirror, vec![out], results)?,
                    Err(ClientError::Api { status, code, .. }) if refused_for_content(status) => {
                        set_aside(sync, "rejected", category, &dir, &out.name)?;
                        tracing::warn!(
                            category,
                            id = out.id,
                            code,
                            "refused by the server; kept in sync/rejected"
                        );
                    }
                    Err(e) => bail!("pushing {category}: {}", describe(&e)),
                }
            }
            Ok(())
        }
        Err(e) => bail!("pushing {category}: {}", describe(&e)),
    }
}

/// A batch refused for what its writes hold (malformed, invalid for the category, too large)
/// — not for who sent it (401, 403: the files stay for a later round).
fn refused_for_content(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 422)
}

/// Sends writes as one batch; the server's result for each.
///
/// The idempotency key holds the mirror's own random origin, how many of its pushes the
/// server has answered, and a hash of the writes: a retry after a lost answer sends the same
/// key (and is applied once), while the same writes made again later — an item deleted and
/// made again as it first was — are a new batch.
async fn push_batch(
    user: &Client,
    category: &str,
    mirror: &mut Mirror,
    batch: &[Outgoing],
) -> Result<Vec<Value>, ClientError> {
    let writes: Vec<Value> = batch.iter().map(|o| o.write.clone()).collect();
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(&writes)
            .unwrap_or_default()
            .hash(&mut h);
        h.finish()
    };
    let key = format!("agent-{}-{}-{digest:016x}", mirror.origin, mirror.pushed);
    let answer = user
        .push(category, Value::Array(writes), Some(&key))
        .await?;
    mirror.pushed += 1;
    Ok(answer["results"].as_array().cloned().unwrap_or_default())
}

/// Applies the server's results to the mirror and the outgoing files.
fn settle(
    sync: &Path,
    category: &str,
    dir: &Path,
    mirror: &mut Mirror,
    batch: Vec<Outgoing>,
    results: Vec<Value>,
) -> anyhow::Result<()> {
    for (out, r) in batch.into_iter().zip(results) {
        let file = dir.join(&out.name);
        match r["status"].as_str() {
            Some("applied") | Some("unchanged") => {
                match (out.body, r["version"].as_str()) {
                    (Some(body), Some(version)) if r["deleted"] != json!(true) => {
                        mirror.items.insert(
                            out.id,
                            Mirrored {
                                version: version.to_owned(),
                                body,
                            },
                        );
                    }
                    _ => {
                        mirror.items.remove(&out.id);
                    }
                }
                // Edited again while it was on its way: the new edit goes up next round.
                if std::fs::read(&file).ok().as_deref() == Some(&out.bytes[..]) {
                    std::fs::remove_file(&file)?;
                }
            }
            Some("conflict") => {
                set_aside(sync, "conflicts", category, dir, &out.name)?;
                if let Ok(current) = Change::deserialize(&r["current"]) {
                    mirror_change(mirror, current);
                }
                tracing::info!(
                    category,
                    id = out.id,
                    "a local change conflicts with the server's; kept in sync/conflicts"
                );
            }
            _ => tracing::warn!(category, id = out.id, answer = %r, "unexpected write result"),
        }
    }
    Ok(())
}

/// Moves an outgoing file to `sync/<place>/<category>/`, under a name of its own (an earlier
/// file set aside for the same item stays).
fn set_aside(
    sync: &Path,
    place: &str,
    category: &str,
    dir: &Path,
    name: &str,
) -> anyhow::Result<()> {
    let to = sync.join(place).join(category);
    std::fs::create_dir_all(&to)?;
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    std::fs::rename(dir.join(name), to.join(format!("{stamp}-{name}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nevent: com").is_empty());
        let out = p.feed(b"mand\ndata: {\"id\":1}\n\n");
        assert_eq!(out, vec![("command".to_owned(), "{\"id\":1}".to_owned())]);
    }

    #[test]
    fn channel_urls_are_websockets() {
        assert_eq!(
            ws_base("https://cloud.example.org"),
            "wss://cloud.example.org"
        );
        assert_eq!(ws_base("http://127.0.0.1:8080"), "ws://127.0.0.1:8080");
    }

    #[test]
    fn geoclue_output_is_read() {
        let text = "Client object: /org/freedesktop/GeoClue2/Client/1\n\nNew location:\nLatitude:    52.520000°\nLongitude:   13.405000°\nAccuracy:    25.000000 meters\n";
        assert_eq!(
            parse_where_am_i(text),
            Some((52.52, 13.405, 25.0, "network"))
        );
    }

    #[test]
    fn account_numbers_are_masked() {
        assert_eq!(mask("1234567890"), "12••••••90");
    }
}
