//! Linked devices and Find Device (PRODUCT.md DV-1 … DV-8): linking a device to an account with
//! its own credential, locations, the commands an owner sends a lost device (locate, ring, lost
//! mode, erase) and their life over the device channel, and the activation lock that keeps a
//! reset device bound to its owner. The protocol is described in docs/design/devices.md.
//!
//! Architecture invariants:
//! - A command is a database row first; the channel only carries it. Its state moves by
//!   conditional updates, so a command is acknowledged once, and only before it expires.
//! - Another account's device is `NotFound`, never `Forbidden`: nothing says it exists.
//! - Hardware ids, locations and lost-mode messages are sealed at rest; hardware ids are found
//!   only through blind indexes.

mod channel;
mod error;
pub mod hardware;
mod link_codes;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use mica_core::archive::{ArchiveWriter, Entry, JsonArray};
use mica_core::crypto::{is_issued_id, random_token_string, token_hash, Keys};
use mica_core::{AccountId, Clock, PhoneE164, SessionId, Timestamp};
use mica_identity::limits::Limiter;
use mica_identity::{ClientInfo, Identity, Principal, Rate};
use mica_store::{
    AckOutcome, CommandRow, DeviceRow, FindOutcome, FinishOutcome, LinkOutcome, LocationRow,
    NewCommand, NewDevice, NoticeRow, Store,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;

use channel::{Registry, Wire};
pub use error::DevicesError;
pub use hardware::Hardware;
pub use link_codes::{CodeLinked, LinkCode, LinkRequestView};

pub type Result<T, E = DevicesError> = std::result::Result<T, E>;

/// A linked device as it describes itself.
#[derive(Debug, Clone)]
pub struct SessionDevice {
    pub id: String,
    pub name: String,
    pub model: String,
    pub os_version: String,
    pub app_version: String,
}

/// Operator settings (`[devices]` in the configuration file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// How long a locate or a ring waits for its device before it expires.
    pub command_ttl_hours: u64,
    /// How long lost mode and erase wait for their device: unset (the default), as long as
    /// the device stays linked — a thief who keeps a phone off for a week must not find it
    /// unlocked and unerased when it comes back on. The owner can cancel either meanwhile.
    pub protective_command_ttl_hours: Option<u64>,
    /// How long reported locations are kept.
    pub location_retention_days: u64,
    /// First gap before an unacknowledged command is sent again; it doubles each time.
    pub resend_after_ms: u64,
    /// Longest gap between re-sends.
    pub resend_max_ms: u64,
    /// Refused links of an activation-locked device, per device.
    pub unlock_attempts: Rate,
    /// Activation-status checks per address.
    pub activation_checks: Rate,
    /// How long a code to link a device stays valid.
    pub link_code_ttl_secs: u64,
    /// How often a device waiting to be linked by code may poll.
    pub link_poll_secs: u64,
    /// Requests to link by code, per address.
    pub link_requests: Rate,
    /// Wrong user codes an account may enter.
    pub link_code_guesses: Rate,
    /// Polls of waiting devices, per address.
    pub link_polls: Rate,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            command_ttl_hours: 7 * 24,
            protective_command_ttl_hours: None,
            location_retention_days: 30,
            resend_after_ms: 1_000,
            resend_max_ms: 30_000,
            unlock_attempts: Rate {
                burst: 5,
                period: Duration::from_secs(3600),
            },
            activation_checks: Rate {
                burst: 20,
                period: Duration::from_secs(60),
            },
            link_code_ttl_secs: 600,
            link_poll_secs: 5,
            link_requests: Rate {
                burst: 10,
                period: Duration::from_secs(3600),
            },
            link_code_guesses: Rate {
                burst: 10,
                period: Duration::from_secs(900),
            },
            // Twelve devices behind one address, each polling every five seconds.
            link_polls: Rate {
                burst: 144,
                period: Duration::from_secs(60),
            },
        }
    }
}

/// What a device declares when it is linked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// What the owner calls it ("Ana's phone").
    pub name: String,
    pub model: String,
    pub os_version: String,
    pub app_version: String,
    pub hardware: Hardware,
    /// Turn Find Device on (it is opt-in: off unless the device's setup asks for it). With it
    /// on, the activation lock binds the device to the account.
    #[serde(default)]
    pub find_device: bool,
}

impl LinkRequest {
    /// The declaration checked, trimmed, and its hardware ids normalised.
    fn validated(self) -> Result<LinkRequest> {
        Ok(LinkRequest {
            name: text_field("name", &self.name, 64, true)?,
            model: text_field("model", &self.model, 64, true)?,
            os_version: text_field("os_version", &self.os_version, 64, false)?,
            app_version: text_field("app_version", &self.app_version, 64, false)?,
            hardware: self.hardware.normalised()?,
            find_device: self.find_device,
        })
    }
}

/// A freshly linked device and its credential (shown once; the server keeps a hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Linked {
    pub device: DeviceView,
    /// `Authorization: Bearer <credential>` on the device endpoints.
    pub credential: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LostModeView {
    pub message: Option<String>,
    pub phone: Option<String>,
    pub since: String,
}

/// A linked (or erased) device as its owner sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    pub name: String,
    pub model: String,
    pub os_version: String,
    pub app_version: String,
    pub hardware: Hardware,
    pub find_device: bool,
    /// `linked`, or `erased` (no longer trackable; its history stays until deleted).
    pub state: String,
    pub battery: Option<i64>,
    pub last_seen_at: Option<String>,
    pub linked_at: String,
    pub unlinked_at: Option<String>,
    /// Connected to this server node right now.
    pub online: bool,
    pub lost_mode: Option<LostModeView>,
    pub last_location: Option<LocationView>,
}

/// Where a location came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LocationSource {
    Gps,
    Network,
    LastKnown,
}

/// One position a device reports.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationReport {
    /// Degrees, −90 … 90.
    pub lat: f64,
    /// Degrees, −180 … 180.
    pub lon: f64,
    /// Metres (radius of 68 % confidence).
    pub accuracy: f64,
    pub source: LocationSource,
    /// Percent, 0 … 100.
    pub battery: Option<i64>,
    /// When the position was taken (RFC 3339); not in the future.
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LocationView {
    pub lat: f64,
    pub lon: f64,
    pub accuracy: f64,
    pub source: LocationSource,
    pub battery: Option<i64>,
    pub at: String,
    pub received_at: String,
}

/// The sealed part of a stored location.
#[derive(Serialize, Deserialize)]
struct Place {
    lat: f64,
    lon: f64,
    accuracy: f64,
    source: LocationSource,
    battery: Option<i64>,
}

impl Place {
    fn view(&self, at: Timestamp, received_at: Timestamp) -> LocationView {
        LocationView {
            lat: self.lat,
            lon: self.lon,
            accuracy: self.accuracy,
            source: self.source,
            battery: self.battery,
            at: rfc3339(at),
            received_at: rfc3339(received_at),
        }
    }
}

/// What an owner can ask a device to do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Report a fresh location now.
    Locate,
    /// Play a sound until stopped on the device.
    Ring,
    /// Lock the device and show a message and a number to call; only the account password
    /// unlocks it.
    LostMode,
    /// Erase the device (step-up required). It is unlinked afterwards; the activation lock
    /// stays.
    Erase,
}

impl CommandKind {
    fn as_str(self) -> &'static str {
        match self {
            CommandKind::Locate => "locate",
            CommandKind::Ring => "ring",
            CommandKind::LostMode => "lost_mode",
            CommandKind::Erase => "erase",
        }
    }

    fn parse(s: &str) -> Option<CommandKind> {
        Some(match s {
            "locate" => CommandKind::Locate,
            "ring" => CommandKind::Ring,
            "lost_mode" => CommandKind::LostMode,
            "erase" => CommandKind::Erase,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub kind: CommandKind,
    /// Lost mode: the message the device shows.
    pub message: Option<String>,
    /// Lost mode: a number the finder can call.
    pub phone: Option<String>,
}

/// A command's payload (lost mode), sealed at rest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Payload {
    message: Option<String>,
    phone: Option<String>,
}

/// A command and where it is in its life: `queued` → `delivered` → `acknowledged` → `done` /
/// `failed` (with a reason); or, before its device acknowledged it, `expired` or `cancelled`
/// (by the owner).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandView {
    pub id: String,
    pub device_id: String,
    /// Grows by one per command to the device.
    pub seq: i64,
    pub kind: CommandKind,
    pub state: String,
    pub reason: Option<String>,
    /// How many times it was sent to the device.
    pub deliveries: i64,
    pub message: Option<String>,
    pub phone: Option<String>,
    pub created_at: String,
    /// When it expires if its device has not acknowledged it; none for lost mode and erase,
    /// which wait for the device as long as it is linked (unless the operator set a limit).
    pub expires_at: Option<String>,
    pub delivered_at: Option<String>,
    pub acknowledged_at: Option<String>,
    pub finished_at: Option<String>,
}

/// What the device channel sends a device about a command.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommandFrame {
    pub id: String,
    /// Grows per device: a device refuses a command whose seq it has already passed.
    pub seq: i64,
    pub kind: CommandKind,
    pub message: Option<String>,
    pub phone: Option<String>,
    pub issued_at: String,
    pub expires_at: Option<String>,
    /// Already acknowledged (sent again after a reconnect): the device only reports how it
    /// ended, it does not run it again.
    pub acknowledged: bool,
}

/// What the device channel carries.
#[derive(Debug, Clone)]
pub enum ChannelFrame {
    /// First frame: who the server thinks is connected.
    Hello {
        device_id: String,
        server_time: String,
    },
    Command(CommandFrame),
    /// Something to show the device's user (see [`mica_core::notices::DeviceNotices`]).
    Notice(mica_core::notices::DeviceNotice),
}

/// How a command ended on the device.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done,
    Failed,
}

/// A live change for the owner's feed.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OwnerEvent {
    /// A command changed state.
    Command {
        device_id: String,
        command: CommandView,
    },
    /// A device was linked, changed, erased or removed (`change` says which).
    Device { device_id: String, change: String },
    /// A device reported where it is.
    Location {
        device_id: String,
        location: LocationView,
    },
}

/// Whether a device is activation-locked, and to which (masked) account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActivationStatus {
    pub locked: bool,
    pub owner: Option<String>,
}

/// A device proven by its credential.
#[derive(Debug, Clone)]
pub struct DeviceCaller {
    pub id: String,
    pub account: AccountId,
    pub find_enabled: bool,
    /// In lost mode when its credential was checked.
    pub lost: bool,
}

/// Account numbers are shown with their middle hidden: `12••••••90`.
pub fn mask_account(account: AccountId) -> String {
    let s = account.to_string();
    let n = s.chars().count();
    s.chars()
        .enumerate()
        .map(|(i, c)| if i < 2 || i + 2 >= n { c } else { '•' })
        .collect()
}

fn text_field(field: &'static str, value: &str, max: usize, required: bool) -> Result<String> {
    let v = value.trim();
    if required && v.is_empty() {
        return Err(DevicesError::invalid(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(DevicesError::invalid(
            field,
            format!("at most {max} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(DevicesError::invalid(
            field,
            "must not hold control characters",
        ));
    }
    Ok(v.to_owned())
}

/// The key refused links of one device count under, whichever way it links.
fn unlock_key(hardware_bidx: &[u8]) -> String {
    format!("{hardware_bidx:02x?}")
}

/// How often the owner of a device in lost mode is told where it is, at most.
const LOCATED_NOTICE_EVERY: Duration = Duration::from_secs(3600);

/// The expiry of a command that waits for its device as long as it is linked.
const NEVER: Timestamp = Timestamp(i64::MAX);

fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// The devices service. Cheap to clone.
#[derive(Clone)]
pub struct Devices(Arc<Inner>);

struct Inner {
    store: Store,
    identity: Identity,
    keys: Arc<Keys>,
    clock: Arc<dyn Clock>,
    cfg: DevicesConfig,
    registry: Arc<Registry>,
    unlock_attempts: Limiter,
    activation_checks: Limiter,
    link_requests: Limiter,
    link_code_guesses: Limiter,
    link_polls: Limiter,
    /// This node, in the wake-ups it sends other nodes (so it ignores its own).
    node: String,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices").finish_non_exhaustive()
    }
}

/// A command sent to a connected device and not acknowledged yet.
struct Outstanding {
    frame: CommandFrame,
    sends: u32,
    due: tokio::time::Instant,
}

/// The state of one device's channel stream.
struct ChannelState {
    devices: Devices,
    device: String,
    hello: Option<ChannelFrame>,
    pending: VecDeque<CommandFrame>,
    /// Stored notices the device has not shown yet, sent after the hello.
    notices: VecDeque<mica_core::notices::DeviceNotice>,
    /// Commands sent whose delivery is not recorded yet (and whether the stream re-sends them
    /// until acknowledged).
    unrecorded: Vec<(String, bool)>,
    outstanding: Vec<Outstanding>,
    mailbox: Arc<channel::Mailbox>,
    _guard: channel::ConnGuard,
}

impl Devices {
    pub fn new(
        store: Store,
        identity: Identity,
        keys: Arc<Keys>,
        clock: Arc<dyn Clock>,
        cfg: DevicesConfig,
    ) -> Devices {
        Devices(Arc::new(Inner {
            unlock_attempts: Limiter::new(cfg.unlock_attempts, clock.clone()),
            activation_checks: Limiter::new(cfg.activation_checks, clock.clone()),
            link_requests: Limiter::new(cfg.link_requests, clock.clone()),
            link_code_guesses: Limiter::new(cfg.link_code_guesses, clock.clone()),
            link_polls: Limiter::new(cfg.link_polls, clock.clone()),
            store,
            identity,
            keys,
            clock,
            cfg,
            registry: Arc::new(Registry::default()),
            node: random_token_string(8),
        }))
    }

    fn now(&self) -> Timestamp {
        self.0.clock.now()
    }

    fn store(&self) -> &Store {
        &self.0.store
    }

    fn open_json<T: serde::de::DeserializeOwned>(&self, field: &str, sealed: &[u8]) -> Result<T> {
        let text = self
            .0
            .keys
            .open(field, sealed)
            .map_err(|_| DevicesError::Internal(format!("cannot open sealed {field}")))?;
        serde_json::from_str(&text).map_err(|e| DevicesError::Internal(format!("{field}: {e}")))
    }

    fn seal_json<T: Serialize>(&self, field: &str, value: &T) -> Result<Vec<u8>> {
        let text =
            serde_json::to_string(value).map_err(|e| DevicesError::Internal(e.to_string()))?;
        Ok(self.0.keys.seal(field, &text))
    }

    fn hardware_of(&self, row: &DeviceRow) -> Result<Hardware> {
        self.open_json("device_hardware", &row.hardware)
    }

    fn location_view(&self, l: &LocationRow) -> Result<LocationView> {
        let p: Place = self.open_json("device_location", &l.place)?;
        Ok(p.view(l.at, l.received_at))
    }

    async fn view(&self, row: &DeviceRow) -> Result<DeviceView> {
        let last = match self.store().last_location(&row.id).await? {
            Some(l) => Some(self.location_view(&l)?),
            None => None,
        };
        let lost_mode = match &row.lost_mode {
            Some(sealed) => Some(self.open_json::<LostModeView>("lost_mode", sealed)?),
            None => None,
        };
        Ok(DeviceView {
            id: row.id.clone(),
            name: row.name.clone(),
            model: row.model.clone(),
            os_version: row.os_version.clone(),
            app_version: row.app_version.clone(),
            hardware: self.hardware_of(row)?,
            find_device: row.find_enabled,
            state: if row.unlinked_at.is_some() {
                row.unlinked_reason
                    .clone()
                    .unwrap_or_else(|| "unlinked".into())
            } else {
                "linked".into()
            },
            battery: row.battery,
            last_seen_at: row.last_seen_at.map(rfc3339),
            linked_at: rfc3339(row.linked_at),
            unlinked_at: row.unlinked_at.map(rfc3339),
            online: row.unlinked_at.is_none() && self.0.registry.is_connected(&row.id),
            lost_mode,
            last_location: last,
        })
    }

    fn command_view(&self, c: &CommandRow) -> Result<CommandView> {
        let payload: Payload = match &c.payload {
            Some(sealed) => self.open_json("device_command", sealed)?,
            None => Payload::default(),
        };
        Ok(CommandView {
            id: c.id.clone(),
            device_id: c.device_id.clone(),
            seq: c.seq,
            kind: CommandKind::parse(&c.kind)
                .ok_or_else(|| DevicesError::Internal(format!("command kind {}", c.kind)))?,
            state: c.state.clone(),
            reason: c.reason.clone(),
            deliveries: c.deliveries,
            message: payload.message,
            phone: payload.phone,
            created_at: rfc3339(c.created_at),
            expires_at: (c.expires_at != NEVER).then(|| rfc3339(c.expires_at)),
            delivered_at: c.delivered_at.map(rfc3339),
            acknowledged_at: c.acknowledged_at.map(rfc3339),
            finished_at: c.finished_at.map(rfc3339),
        })
    }

    fn frame(&self, c: &CommandRow) -> Result<CommandFrame> {
        let v = self.command_view(c)?;
        Ok(CommandFrame {
            id: v.id,
            seq: v.seq,
            kind: v.kind,
            message: v.message,
            phone: v.phone,
            issued_at: v.created_at,
            expires_at: v.expires_at,
            acknowledged: c.state == "acknowledged",
        })
    }

    fn publish_command(&self, c: &CommandRow) {
        match self.command_view(c) {
            Ok(command) => self.0.registry.publish(
                c.account_id,
                OwnerEvent::Command {
                    device_id: c.device_id.clone(),
                    command,
                },
            ),
            Err(e) => tracing::warn!(error = %e, "cannot describe a command"),
        }
    }

    fn publish_device(&self, account: AccountId, device: &str, change: &str) {
        self.0.registry.publish(
            account,
            OwnerEvent::Device {
                device_id: device.to_owned(),
                change: change.to_owned(),
            },
        );
    }

    async fn expire(&self, device: Option<&str>) -> Result<()> {
        for c in self.store().expire_commands(device, self.now()).await? {
            self.publish_command(&c);
        }
        Ok(())
    }

    /// Whether the owner may send `row` a command.
    fn commandable(row: &DeviceRow) -> Result<()> {
        if row.unlinked_at.is_some() {
            return Err(DevicesError::DeviceUnlinked);
        }
        if !row.find_enabled {
            return Err(DevicesError::FindDeviceOff);
        }
        Ok(())
    }

    async fn owned(&self, p: &Principal, id: &str) -> Result<DeviceRow> {
        self.store()
            .device(p.account, id)
            .await?
            .ok_or(DevicesError::NotFound)
    }

    // ---- The owner's side -------------------------------------------------------------

    /// Links the device the caller signed in on. Refused when an activation lock binds its
    /// hardware to another account.
    pub async fn link(
        &self,
        p: &Principal,
        req: LinkRequest,
        client: &ClientInfo,
    ) -> Result<Linked> {
        let req = req.validated()?;
        self.link_as(p.account, &p.session, req, client).await
    }

    /// Links a device whose declaration is already validated, for `account`, on `session`
    /// (the session the device itself uses).
    async fn link_as(
        &self,
        account: AccountId,
        session: &SessionId,
        req: LinkRequest,
        client: &ClientInfo,
    ) -> Result<Linked> {
        let LinkRequest {
            name,
            model,
            os_version,
            app_version,
            hardware,
            find_device,
        } = req;
        let keys = &self.0.keys;
        let hardware_bidx = hardware.index(keys);
        let attempts_key = unlock_key(&hardware_bidx);
        let id = format!("dev_{}", random_token_string(16));
        let credential = format!("mdc_{}", random_token_string(32));
        let now = self.now();
        let outcome = self
            .store()
            .link_device(&NewDevice {
                id: id.clone(),
                account_id: account,
                session_id: Some(session.0.clone()),
                name,
                model: model.clone(),
                os_version,
                app_version,
                hardware: self.seal_json("device_hardware", &hardware)?,
                hardware_bidx,
                hardware_id_bidxs: hardware.id_indexes(keys),
                credential_hash: token_hash(&credential),
                find_enabled: find_device,
                now,
            })
            .await?;
        match outcome {
            LinkOutcome::Locked { owner } => {
                // Only refusals count, so strangers' attempts never lock the owner out.
                self.0
                    .unlock_attempts
                    .check(&attempts_key)
                    .map_err(|wait| DevicesError::RateLimited { retry_after: wait })?;
                tracing::info!(%account, "link refused: activation lock");
                Err(DevicesError::ActivationLocked {
                    owner: mask_account(owner),
                })
            }
            LinkOutcome::Linked { replaced_sessions } => {
                for s in replaced_sessions {
                    if s != session.0 {
                        self.0
                            .identity
                            .end_session(
                                account,
                                &SessionId(s),
                                "device_relinked",
                                client,
                                Some(model.clone()),
                            )
                            .await?;
                    }
                }
                self.0
                    .identity
                    .record_event(account, "device_linked", client, Some(session), Some(model))
                    .await?;
                self.publish_device(account, &id, "linked");
                let row = self
                    .store()
                    .device(account, &id)
                    .await?
                    .ok_or(DevicesError::NotFound)?;
                // A device reset while in lost mode (the link kept it) locks again: lost mode
                // goes to it once more, unless one is already waiting for it.
                if let Some(sealed) = &row.lost_mode {
                    let lost: LostModeView = self.open_json("lost_mode", sealed)?;
                    let waiting = self
                        .store()
                        .commands(account, &id, 200)
                        .await?
                        .iter()
                        .any(|c| {
                            c.kind == CommandKind::LostMode.as_str()
                                && matches!(c.state.as_str(), "queued" | "delivered")
                        });
                    if !waiting {
                        let payload = Payload {
                            message: lost.message,
                            phone: lost.phone,
                        };
                        self.queue(account, &id, CommandKind::LostMode, Some(&payload))
                            .await?;
                    }
                }
                Ok(Linked {
                    device: self.view(&row).await?,
                    credential,
                })
            }
        }
    }

    /// An account is being deleted: its devices' open channels close now (their credentials
    /// stopped working when the deletion began; the rows go with the account's data).
    pub async fn forget_account(&self, account: AccountId) -> Result<()> {
        for row in self.store().devices(account).await? {
            self.0.registry.disconnect(&row.id);
        }
        Ok(())
    }

    /// The account's devices: linked ones, then erased ones whose history is kept.
    pub async fn list(&self, p: &Principal) -> Result<Vec<DeviceView>> {
        let mut out = Vec::new();
        for row in self.store().devices(p.account).await? {
            out.push(self.view(&row).await?);
        }
        Ok(out)
    }

    /// The linked device whose session `p` is — who a backup is of: `(id, name, model)`.
    pub async fn of_session(&self, p: &Principal) -> Result<Option<(String, String, String)>> {
        Ok(self
            .store()
            .device_of_session(p.account, &p.session.0)
            .await?
            .map(|d| (d.id, d.name, d.model)))
    }

    /// The linked device whose session `p` is, with what it says of itself — who a feedback
    /// report came from.
    pub async fn session_device(&self, p: &Principal) -> Result<Option<SessionDevice>> {
        Ok(self
            .store()
            .device_of_session(p.account, &p.session.0)
            .await?
            .map(|d| SessionDevice {
                id: d.id,
                name: d.name,
                model: d.model,
                os_version: d.os_version,
                app_version: d.app_version,
            }))
    }

    pub async fn get(&self, p: &Principal, id: &str) -> Result<DeviceView> {
        let row = self.owned(p, id).await?;
        self.view(&row).await
    }

    pub async fn rename(&self, p: &Principal, id: &str, name: &str) -> Result<DeviceView> {
        let name = text_field("name", name, 64, true)?;
        if !self.store().rename_device(p.account, id, &name).await? {
            return Err(DevicesError::NotFound);
        }
        self.publish_device(p.account, id, "renamed");
        self.get(p, id).await
    }

    /// Turns Find Device on or off; off needs a fresh step-up, and releases the activation
    /// lock.
    pub async fn set_find_device(
        &self,
        p: &Principal,
        id: &str,
        on: bool,
        client: &ClientInfo,
    ) -> Result<DeviceView> {
        let row = self.owned(p, id).await?;
        if row.unlinked_at.is_some() {
            return Err(DevicesError::DeviceUnlinked);
        }
        if !on {
            self.0.identity.require_step_up(p).await?;
        }
        let bidxs = self.hardware_of(&row)?.id_indexes(&self.0.keys);
        let cancelled = match self
            .store()
            .set_find_device(p.account, id, on, &bidxs, self.now())
            .await?
        {
            FindOutcome::Set { cancelled } => cancelled,
            FindOutcome::NotLinked => return Err(DevicesError::NotFound),
            // The same hardware was linked to another account with Find Device on since this
            // link: the lock is that account's (the device was set up again under it).
            FindOutcome::Locked { owner } => {
                return Err(DevicesError::ActivationLocked {
                    owner: mask_account(owner),
                })
            }
        };
        for c in &cancelled {
            self.0.registry.acknowledged(id, &c.id);
            self.publish_command(c);
        }
        self.0
            .identity
            .record_event(
                p.account,
                if on {
                    "find_device_on"
                } else {
                    "find_device_off"
                },
                client,
                Some(&p.session),
                Some(row.name.clone()),
            )
            .await?;
        self.publish_device(p.account, id, "find_device");
        self.get(p, id).await
    }

    /// Removes a device (step-up needed): its credential and session end, its history and
    /// commands go, and its activation lock is released.
    pub async fn remove(&self, p: &Principal, id: &str, client: &ClientInfo) -> Result<()> {
        self.owned(p, id).await?;
        self.0.identity.require_step_up(p).await?;
        let Some(row) = self.store().remove_device(p.account, id).await? else {
            return Err(DevicesError::NotFound);
        };
        self.0.registry.disconnect(id);
        if let Some(s) = row.session_id.filter(|_| row.unlinked_at.is_none()) {
            self.0
                .identity
                .end_session(
                    p.account,
                    &SessionId(s),
                    "device_removed",
                    client,
                    Some(row.name.clone()),
                )
                .await?;
        } else {
            self.0
                .identity
                .record_event(
                    p.account,
                    "device_removed",
                    client,
                    Some(&p.session),
                    Some(row.name.clone()),
                )
                .await?;
        }
        self.publish_device(p.account, id, "removed");
        Ok(())
    }

    /// A device's `n` newest places (at most 1,000), oldest first: what a page shows of its
    /// history, without reading and opening the rest.
    pub async fn recent_locations(
        &self,
        p: &Principal,
        id: &str,
        n: usize,
    ) -> Result<Vec<LocationView>> {
        self.owned(p, id).await?;
        let to = self.now().plus(Duration::from_secs(3600));
        let n = i64::try_from(n.min(1000)).unwrap_or(1000);
        self.store()
            .locations(id, Timestamp(0), to, n)
            .await?
            .iter()
            .map(|l| self.location_view(l))
            .collect()
    }

    /// Locations in `[from, to)`, oldest first (at most 1,000).
    pub async fn locations(
        &self,
        p: &Principal,
        id: &str,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<Vec<LocationView>> {
        self.owned(p, id).await?;
        let to = to.unwrap_or_else(|| self.now().plus(Duration::from_secs(3600)));
        let from = from.unwrap_or(Timestamp(0));
        if from > to {
            return Err(DevicesError::invalid("from", "must not be after `to`"));
        }
        self.store()
            .locations(id, from, to, 1000)
            .await?
            .iter()
            .map(|l| self.location_view(l))
            .collect()
    }

    /// Deletes a device's location history.
    pub async fn delete_locations(&self, p: &Principal, id: &str) -> Result<u64> {
        self.owned(p, id).await?;
        Ok(self.store().delete_locations(p.account, id).await?)
    }

    /// Sends a command; erase needs a fresh step-up. The device gets it now when connected,
    /// else when it next connects (unless it expires first).
    pub async fn command(
        &self,
        p: &Principal,
        id: &str,
        req: CommandRequest,
        client: &ClientInfo,
    ) -> Result<CommandView> {
        let payload = match req.kind {
            CommandKind::LostMode => {
                let message = match &req.message {
                    Some(m) => {
                        Some(text_field("message", m, 200, false)?).filter(|m| !m.is_empty())
                    }
                    None => None,
                };
                let phone = match &req.phone {
                    Some(ph) => Some(
                        PhoneE164::parse(ph)
                            .map_err(|e| DevicesError::invalid("phone", e.to_string()))?
                            .as_str()
                            .to_owned(),
                    ),
                    None => None,
                };
                Some(Payload { message, phone })
            }
            _ => {
                if req.message.is_some() || req.phone.is_some() {
                    return Err(DevicesError::invalid(
                        "message",
                        "only lost mode takes a message and a phone number",
                    ));
                }
                None
            }
        };
        // Erase and lost mode check the device first (erase asks for step-up, both go in the
        // security log with the device's name). Ring and locate — the frequent ones, on the
        // way of a person looking for their phone — go straight to the insert, which itself
        // requires a linked device with Find Device on; only a refusal looks at why.
        let checked = match req.kind {
            CommandKind::Erase | CommandKind::LostMode => {
                let row = self.owned(p, id).await?;
                Self::commandable(&row)?;
                if req.kind == CommandKind::Erase {
                    self.0.identity.require_step_up(p).await?;
                }
                Some(row)
            }
            _ => None,
        };
        let Some(c) = self
            .queue(p.account, id, req.kind, payload.as_ref())
            .await?
        else {
            // Not this account's, unlinked or Find Device off (maybe just now): say which.
            let row = self.owned(p, id).await?;
            Self::commandable(&row)?;
            return Err(DevicesError::DeviceUnlinked);
        };
        if let Some(row) = checked {
            self.0
                .identity
                .record_event(
                    p.account,
                    if req.kind == CommandKind::Erase {
                        "device_erase_requested"
                    } else {
                        "device_lost_mode_requested"
                    },
                    client,
                    Some(&p.session),
                    Some(row.name.clone()),
                )
                .await?;
        }
        self.command_view(&c)
    }

    /// When a command of `kind` issued `now` expires.
    fn expiry(&self, kind: CommandKind, now: Timestamp) -> Timestamp {
        let hours = match kind {
            CommandKind::LostMode | CommandKind::Erase => {
                match self.0.cfg.protective_command_ttl_hours {
                    Some(h) => h,
                    None => return NEVER,
                }
            }
            CommandKind::Locate | CommandKind::Ring => self.0.cfg.command_ttl_hours,
        };
        now.plus(Duration::from_secs(hours.saturating_mul(3600)))
    }

    /// Queues a command for `account`'s linked device `id` with Find Device on (`None` when it
    /// is not one), tells the owner's feed, and hands it to the device now if it is connected —
    /// to this node or, through the database's notification, to another.
    async fn queue(
        &self,
        account: AccountId,
        id: &str,
        kind: CommandKind,
        payload: Option<&Payload>,
    ) -> Result<Option<CommandRow>> {
        let now = self.now();
        let new = NewCommand {
            id: format!("cmd_{}", random_token_string(16)),
            account_id: account,
            device_id: id.to_owned(),
            kind: kind.as_str().to_owned(),
            payload: payload
                .map(|pl| self.seal_json("device_command", pl))
                .transpose()?,
            created_at: now,
            expires_at: self.expiry(kind, now),
        };
        let Some(c) = self.store().create_command(&new).await? else {
            return Ok(None);
        };
        self.publish_command(&c);
        if !self.0.registry.send(id, Wire::Command(self.frame(&c)?)) {
            // The device may be connected to another node.
            if let Err(e) = self
                .store()
                .notify_device(&format!("{}:{id}", self.0.node))
                .await
            {
                tracing::warn!(error = %e, "waking the other nodes failed");
            }
        }
        Ok(Some(c))
    }

    /// A device's commands, newest first (at most 200).
    pub async fn commands(&self, p: &Principal, id: &str) -> Result<Vec<CommandView>> {
        self.owned(p, id).await?;
        self.expire(Some(id)).await?;
        self.store()
            .commands(p.account, id, 200)
            .await?
            .iter()
            .map(|c| self.command_view(c))
            .collect()
    }

    /// Cancels a command its device has not acknowledged: the device is no longer sent it,
    /// and its acknowledgement, should the frame already be on its way, is refused
    /// (`command_cancelled`), so it never runs. Once acknowledged it cannot be
    /// (`command_not_cancellable`): the device may be running it. Cancelling lost mode or an
    /// erase needs a fresh step-up, as sending an erase does — a stolen session must not call
    /// off what protects the device — and goes in the security log. Cancelling again answers
    /// the cancelled command.
    pub async fn cancel_command(
        &self,
        p: &Principal,
        id: &str,
        command: &str,
        client: &ClientInfo,
    ) -> Result<CommandView> {
        if !is_issued_id(command) {
            return Err(DevicesError::NotFound);
        }
        let c = self
            .store()
            .command(p.account, command)
            .await?
            .filter(|c| c.device_id == id)
            .ok_or(DevicesError::NotFound)?;
        let protective = matches!(c.kind.as_str(), "lost_mode" | "erase");
        if protective && matches!(c.state.as_str(), "queued" | "delivered") {
            self.0.identity.require_step_up(p).await?;
        }
        let Some(cancelled) = self
            .store()
            .cancel_command(p.account, command, self.now())
            .await?
        else {
            let c = self.command_state(p, command).await?;
            return match c.state.as_str() {
                "cancelled" => Ok(c),
                "expired" => Err(DevicesError::CommandExpired),
                _ => Err(DevicesError::NotCancellable),
            };
        };
        // A connected device is not sent it again (its acknowledgement would be refused).
        self.0.registry.acknowledged(id, &cancelled.id);
        self.publish_command(&cancelled);
        if protective {
            let name = self.owned(p, id).await.ok().map(|d| d.name);
            self.0
                .identity
                .record_event(
                    p.account,
                    if c.kind == "erase" {
                        "device_erase_cancelled"
                    } else {
                        "device_lost_mode_cancelled"
                    },
                    client,
                    Some(&p.session),
                    name,
                )
                .await?;
        }
        self.command_view(&cancelled)
    }

    pub async fn command_state(&self, p: &Principal, command: &str) -> Result<CommandView> {
        let c = self
            .store()
            .command(p.account, command)
            .await?
            .ok_or(DevicesError::NotFound)?;
        if c.expires_at <= self.now() && matches!(c.state.as_str(), "queued" | "delivered") {
            self.expire(Some(&c.device_id)).await?;
            let c = self
                .store()
                .command(p.account, command)
                .await?
                .ok_or(DevicesError::NotFound)?;
            return self.command_view(&c);
        }
        self.command_view(&c)
    }

    /// The owner's live feed of their devices' changes.
    pub fn subscribe(&self, p: &Principal) -> broadcast::Receiver<OwnerEvent> {
        self.0.registry.subscribe(p.account)
    }

    /// Whether a device with these hardware ids is activation-locked (asked by a freshly
    /// reset device before anyone signs in; limited per address).
    pub async fn activation_status(
        &self,
        hardware: &Hardware,
        ip: &str,
    ) -> Result<ActivationStatus> {
        self.0
            .activation_checks
            .check(ip)
            .map_err(|wait| DevicesError::RateLimited { retry_after: wait })?;
        let hardware = hardware.normalised()?;
        let owner = self
            .store()
            .activation_lock(&hardware.id_indexes(&self.0.keys))
            .await?;
        Ok(ActivationStatus {
            locked: owner.is_some(),
            owner: owner.map(mask_account),
        })
    }

    /// Expires overdue commands, drops locations past their retention and link requests past
    /// their codes' validity.
    pub async fn maintenance(&self) -> Result<()> {
        self.expire(None).await?;
        self.store().purge_link_requests(self.now()).await?;
        let keep = Duration::from_secs(self.0.cfg.location_retention_days * 86_400);
        self.store().purge_locations(self.now().minus(keep)).await?;
        self.store().purge_device_notices(self.now()).await?;
        Ok(())
    }

    /// Writes the account's devices into its data export (`devices/devices.json`): each as
    /// its owner sees it, with its whole location history (read a page at a time) and its
    /// commands.
    pub async fn export_into<W: ArchiveWriter>(&self, account: AccountId, out: &W) -> Result<()> {
        let out_err = DevicesError::Internal;
        let devices = self.store().devices(account).await?;
        if devices.is_empty() {
            return Ok(());
        }
        let mut entry = Entry::start(out, "devices/devices.json".into())
            .await
            .map_err(out_err)?;
        for (n, row) in devices.iter().enumerate() {
            let open: &[u8] = if n == 0 {
                b"[\n{\n\"device\": "
            } else {
                b",\n{\n\"device\": "
            };
            entry.write(open).await.map_err(out_err)?;
            entry
                .write_json(&self.view(row).await?)
                .await
                .map_err(out_err)?;
            entry.write(b",\n\"locations\": ").await.map_err(out_err)?;
            let mut locations = JsonArray::within(entry);
            let mut after = None;
            loop {
                let page = self
                    .store()
                    .locations_after(&row.id, after.as_ref(), EXPORT_PAGE)
                    .await?;
                for l in &page {
                    locations
                        .push(&self.location_view(l)?)
                        .await
                        .map_err(out_err)?;
                }
                if page.len() < EXPORT_PAGE as usize {
                    break;
                }
                after = page.into_iter().last();
            }
            entry = locations.close().await.map_err(out_err)?;
            let commands = self
                .store()
                .commands(account, &row.id, i64::MAX)
                .await?
                .iter()
                .map(|c| self.command_view(c))
                .collect::<Result<Vec<_>>>()?;
            entry.write(b",\n\"commands\": ").await.map_err(out_err)?;
            entry.write_json(&commands).await.map_err(out_err)?;
            entry.write(b"\n}").await.map_err(out_err)?;
        }
        entry.write(b"\n]\n").await.map_err(out_err)?;
        entry.finish().await.map_err(out_err)
    }

    /// Relays other nodes' wake-ups to the devices connected here (PostgreSQL; returns `Ok` at
    /// once on SQLite, where one node holds every connection). Runs until its listener fails,
    /// and then returns the error: the caller starts it again.
    pub async fn relay_wakeups(&self) -> Result<()> {
        use futures_util::StreamExt;
        let Some(mut wakeups) = self.store().device_wakeups().await? else {
            return Ok(());
        };
        while let Some(payload) = wakeups.next().await {
            let Some((node, device)) = payload.split_once(':') else {
                continue;
            };
            if node == self.0.node {
                continue;
            }
            // A notice for an account's devices (its id), stored by the node that sent it.
            if device.starts_with("ntc_") {
                if let Some(row) = self.store().device_notice(device, self.now()).await? {
                    match self.notice(&row) {
                        Ok(n) => {
                            self.0.registry.notify_account(row.account_id, &n);
                        }
                        Err(e) => tracing::warn!(error = %e, "a stored notice cannot be opened"),
                    }
                }
                continue;
            }
            if !self.0.registry.is_connected(device) {
                continue;
            }
            for c in self.store().open_commands(device, self.now()).await? {
                if c.state != "acknowledged" {
                    self.0.registry.send(device, Wire::Command(self.frame(&c)?));
                }
            }
        }
        // The listener's stream ends after an error it could not recover from (the database
        // restarted, a failover): an error, so the caller listens again rather than stopping.
        Err(DevicesError::Internal(
            "the wake-up listener stopped; listening again".into(),
        ))
    }

    /// Devices connected to this node.
    pub fn connections(&self) -> usize {
        self.0.registry.connections()
    }

    // ---- The device's side -------------------------------------------------------------

    /// The device holding this credential (`mdc_…`).
    pub async fn authenticate(&self, credential: &str) -> Result<DeviceCaller> {
        if !credential.starts_with("mdc_") || credential.len() > 128 {
            return Err(DevicesError::BadCredential);
        }
        let row = self
            .store()
            .device_by_credential(&token_hash(credential))
            .await?
            .ok_or(DevicesError::BadCredential)?;
        Ok(DeviceCaller {
            id: row.id,
            account: row.account_id,
            find_enabled: row.find_enabled,
            lost: row.lost_mode.is_some(),
        })
    }

    /// Opens the device channel: a hello, every open command, then commands as they are
    /// issued; unacknowledged ones are sent again with doubling gaps.
    pub async fn connect(&self, d: &DeviceCaller) -> Result<impl Stream<Item = ChannelFrame>> {
        let now = self.now();
        self.store().touch_device(&d.id, None, now).await?;
        self.expire(Some(&d.id)).await?;
        // Register before reading the open commands, so one issued in between is not missed
        // (at worst it arrives twice, which the device tolerates).
        let (mailbox, guard) = self.0.registry.connect(&d.id, d.account);
        let pending = self
            .store()
            .open_commands(&d.id, now)
            .await?
            .iter()
            .map(|c| self.frame(c))
            .collect::<Result<VecDeque<_>>>()?;
        // Notices sent while the device was away (one sent since it registered may come
        // twice; the device shows an id once).
        let notices = self
            .store()
            .unseen_device_notices(d.account, &d.id, now)
            .await?
            .iter()
            .filter_map(|n| match self.notice(n) {
                Ok(n) => Some(n),
                // Never let one notice keep the channel (and lock or erase with it) down.
                Err(e) => {
                    tracing::warn!(error = %e, notice = %n.id, "a stored notice cannot be opened");
                    None
                }
            })
            .collect::<VecDeque<_>>();
        let state = ChannelState {
            devices: self.clone(),
            device: d.id.clone(),
            hello: Some(ChannelFrame::Hello {
                device_id: d.id.clone(),
                server_time: rfc3339(now),
            }),
            pending,
            notices,
            unrecorded: Vec::new(),
            outstanding: Vec::new(),
            mailbox,
            _guard: guard,
        };
        Ok(futures_util::stream::unfold(state, |mut st| async move {
            let frame = st.next().await?;
            Some((frame, st))
        }))
    }

    /// A stored notice as the device is sent it.
    fn notice(&self, n: &NoticeRow) -> Result<mica_core::notices::DeviceNotice> {
        let body: mica_core::notices::NoticeBody =
            self.open_json(mica_core::notices::NOTICE_FIELD, &n.body)?;
        Ok(mica_core::notices::DeviceNotice {
            id: n.id.clone(),
            kind: n.kind.clone(),
            title: body.title,
            text: body.text,
            sent_at: rfc3339(n.created_at),
        })
    }

    /// The device has shown a notice: it is not sent it again. Saying so twice is fine; a
    /// notice of another account, or one withdrawn or expired and forgotten, is `not_found`.
    pub async fn notice_seen(&self, d: &DeviceCaller, notice: &str) -> Result<()> {
        if !is_issued_id(notice) {
            return Err(DevicesError::NotFound);
        }
        let known = self
            .store()
            .mark_device_notice_seen(d.account, &d.id, notice, self.now())
            .await?;
        if known {
            Ok(())
        } else {
            Err(DevicesError::NotFound)
        }
    }

    /// A device acknowledges a command: the first acknowledgement lets it run it, once. A
    /// repeated one is refused (`command_already_acknowledged`), and so is one after expiry
    /// (`command_expired`): a replayed or stale command never runs.
    pub async fn acknowledge(&self, d: &DeviceCaller, command: &str) -> Result<CommandView> {
        // An id sent on the channel reaches no query unless it could be one of ours.
        if !is_issued_id(command) {
            return Err(DevicesError::NotFound);
        }
        match self
            .store()
            .acknowledge_command(&d.id, command, self.now())
            .await?
        {
            AckOutcome::Acknowledged(c) => {
                self.0.registry.acknowledged(&d.id, &c.id);
                if c.delivered_at == c.acknowledged_at {
                    // Acknowledged before its delivery was recorded (it usually is: the
                    // record waits a little): the owner's feed still shows it delivered first.
                    self.publish_command(&CommandRow {
                        state: "delivered".into(),
                        acknowledged_at: None,
                        ..c.clone()
                    });
                }
                self.publish_command(&c);
                self.command_view(&c)
            }
            AckOutcome::Again(c) => {
                // Only the first acknowledgement lets the device run a command: a device that
                // is told "again" cannot know it ran it, and must not run it now.
                self.0.registry.acknowledged(&d.id, &c.id);
                Err(DevicesError::AlreadyAcknowledged)
            }
            AckOutcome::Expired(c) => {
                self.publish_command(&c);
                Err(DevicesError::CommandExpired)
            }
            AckOutcome::Finished(_) => Err(DevicesError::CommandFinished),
            AckOutcome::Cancelled(_) => Err(DevicesError::CommandCancelled),
            AckOutcome::NotFound => Err(DevicesError::NotFound),
        }
    }

    /// A device reports how a command ended. A finished erase unlinks the device.
    pub async fn finish(
        &self,
        d: &DeviceCaller,
        command: &str,
        outcome: Outcome,
        reason: Option<&str>,
        client: &ClientInfo,
    ) -> Result<CommandView> {
        if !is_issued_id(command) {
            return Err(DevicesError::NotFound);
        }
        let reason = match reason {
            Some(r) => Some(text_field("reason", r, 500, false)?),
            None => None,
        };
        let state = match outcome {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
        };
        let now = self.now();
        match self
            .store()
            .finish_command(&d.id, command, state, reason.as_deref(), now, |c| {
                // A payload that no longer opens must not hold the command open for ever (an
                // acknowledged command is sent again at every connection): the device is in
                // lost mode all the same, without the message.
                let payload: Payload = match &c.payload {
                    Some(sealed) => self
                        .open_json("device_command", sealed)
                        .unwrap_or_else(|e| {
                            tracing::error!(command = %c.id, error = %e, "a lost mode's message does not open");
                            Payload::default()
                        }),
                    None => Payload::default(),
                };
                let lost = LostModeView {
                    message: payload.message,
                    phone: payload.phone,
                    since: rfc3339(now),
                };
                self.seal_json("lost_mode", &lost)
                    .map_err(|e| mica_store::StoreError::Corrupt(e.to_string()))
            })
            .await?
        {
            FinishOutcome::Finished {
                command,
                unlinked_session,
            } => {
                self.publish_command(&command);
                if command.kind == "lost_mode" && state == "done" {
                    self.publish_device(d.account, &d.id, "lost_mode");
                }
                if let Some(session) = unlinked_session {
                    self.0.registry.disconnect(&d.id);
                    match session {
                        Some(s) => {
                            self.0
                                .identity
                                .end_session(
                                    d.account,
                                    &SessionId(s),
                                    "device_erased",
                                    client,
                                    Some(d.id.clone()),
                                )
                                .await?
                        }
                        None => {
                            self.0
                                .identity
                                .record_event(
                                    d.account,
                                    "device_erased",
                                    client,
                                    None,
                                    Some(d.id.clone()),
                                )
                                .await?
                        }
                    }
                    self.publish_device(d.account, &d.id, "erased");
                }
                self.command_view(&command)
            }
            FinishOutcome::Again(c) => self.command_view(&c),
            FinishOutcome::WrongState(c) => Err(match c.state.as_str() {
                "queued" | "delivered" => DevicesError::NotAcknowledged,
                "expired" => DevicesError::CommandExpired,
                "cancelled" => DevicesError::CommandCancelled,
                _ => DevicesError::CommandFinished,
            }),
            FinishOutcome::NotFound => Err(DevicesError::NotFound),
        }
    }

    /// A device reports positions (all stored, or none when one is invalid).
    pub async fn report_locations(
        &self,
        d: &DeviceCaller,
        reports: &[LocationReport],
    ) -> Result<usize> {
        if !d.find_enabled {
            return Err(DevicesError::FindDeviceOff);
        }
        if reports.is_empty() || reports.len() > 100 {
            return Err(DevicesError::invalid(
                "locations",
                "send between 1 and 100 locations",
            ));
        }
        let now = self.now();
        let oldest = now.minus(Duration::from_secs(
            self.0.cfg.location_retention_days * 86_400,
        ));
        let mut rows = Vec::with_capacity(reports.len());
        let mut newest: Option<(Timestamp, LocationView)> = None;
        for r in reports {
            if !r.lat.is_finite() || !(-90.0..=90.0).contains(&r.lat) {
                return Err(DevicesError::invalid(
                    "lat",
                    "a latitude is between -90 and 90 degrees",
                ));
            }
            if !r.lon.is_finite() || !(-180.0..=180.0).contains(&r.lon) {
                return Err(DevicesError::invalid(
                    "lon",
                    "a longitude is between -180 and 180 degrees",
                ));
            }
            if !r.accuracy.is_finite() || !(0.0..=1_000_000.0).contains(&r.accuracy) {
                return Err(DevicesError::invalid(
                    "accuracy",
                    "an accuracy is between 0 and 1,000,000 metres",
                ));
            }
            if r.battery.is_some_and(|b| !(0..=100).contains(&b)) {
                return Err(DevicesError::invalid(
                    "battery",
                    "a battery level is between 0 and 100",
                ));
            }
            let at =
                time::OffsetDateTime::parse(&r.at, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        DevicesError::invalid(
                            "at",
                            "give the time as RFC 3339, e.g. 2026-11-30T10:00:00Z",
                        )
                    })?;
            let at = Timestamp::from_offset(at);
            if at > now.plus(Duration::from_secs(300)) {
                return Err(DevicesError::invalid(
                    "at",
                    "this time is in the future; check the device's clock",
                ));
            }
            if at < oldest {
                return Err(DevicesError::invalid(
                    "at",
                    "this time is older than the location history keeps",
                ));
            }
            let place = Place {
                lat: r.lat,
                lon: r.lon,
                accuracy: r.accuracy,
                source: r.source,
                battery: r.battery,
            };
            rows.push(LocationRow {
                at,
                received_at: now,
                place: self.seal_json("device_location", &place)?,
            });
            if newest.as_ref().is_none_or(|(t, _)| at >= *t) {
                newest = Some((at, place.view(at, now)));
            }
        }
        self.store().add_locations(d.account, &d.id, &rows).await?;
        let battery = newest.as_ref().and_then(|(_, l)| l.battery);
        self.store().touch_device(&d.id, battery, now).await?;
        if let Some((_, location)) = newest {
            if d.lost {
                self.tell_located(d, &location, now).await?;
            }
            self.0.registry.publish(
                d.account,
                OwnerEvent::Location {
                    device_id: d.id.clone(),
                    location,
                },
            );
        }
        Ok(rows.len())
    }

    /// A device in lost mode said where it is: its owner is told by mail (never by SMS, which
    /// could reach the lost phone itself), at most once an hour — what a person who lost a
    /// phone waits for.
    async fn tell_located(&self, d: &DeviceCaller, l: &LocationView, now: Timestamp) -> Result<()> {
        let Some(name) = self
            .store()
            .claim_located_notice(&d.id, now, LOCATED_NOTICE_EVERY)
            .await?
        else {
            return Ok(());
        };
        let battery = l
            .battery
            .map(|b| format!(", battery {b}%"))
            .unwrap_or_default();
        let text = format!(
            "Your device \"{name}\", in lost mode, was located at {}: latitude {:.5}, longitude \
             {:.5} (within {:.0} m{battery}). Map: https://www.openstreetmap.org/?mlat={:.5}&mlon={:.5}#map=17/{:.5}/{:.5}",
            l.at, l.lat, l.lon, l.accuracy, l.lat, l.lon, l.lat, l.lon
        );
        self.0
            .identity
            .mail_owner(d.account, "your lost device was located", text)
            .await;
        Ok(())
    }

    /// A device says it is alive (and how charged it is).
    pub async fn heartbeat(&self, d: &DeviceCaller, battery: Option<i64>) -> Result<()> {
        if battery.is_some_and(|b| !(0..=100).contains(&b)) {
            return Err(DevicesError::invalid(
                "battery",
                "a battery level is between 0 and 100",
            ));
        }
        self.store()
            .touch_device(&d.id, battery, self.now())
            .await?;
        Ok(())
    }

    /// Leaves lost mode: only the account's password does it (checked like a sign-in).
    pub async fn exit_lost_mode(
        &self,
        d: &DeviceCaller,
        password: SecretString,
        client: &ClientInfo,
    ) -> Result<()> {
        self.0
            .identity
            .check_password(d.account, password, &client.ip)
            .await?;
        self.store().set_lost_mode(&d.id, None).await?;
        self.0
            .identity
            .record_event(
                d.account,
                "device_lost_mode_ended",
                client,
                None,
                Some(d.id.clone()),
            )
            .await?;
        self.publish_device(d.account, &d.id, "lost_mode");
        Ok(())
    }
}

/// Locations read at a time for the data export.
const EXPORT_PAGE: i64 = 1_000;

/// How long after sending a command its delivery is recorded (see
/// [`ChannelState::record_deliveries`]).
const RECORD_DELIVERY_AFTER: Duration = Duration::from_millis(20);

impl mica_core::notices::DeviceNotices for Devices {
    /// Linked devices connected to this node get a `notice` frame on their command channel
    /// (the others get the stored notice when they connect; see [`Devices::connect`]).
    /// Other nodes (PostgreSQL) are woken with the notice's id and send the stored notice to
    /// the account's devices connected to them.
    fn tell_devices(&self, account: AccountId, notice: &mica_core::notices::DeviceNotice) {
        let told = self.0.registry.notify_account(account, notice);
        tracing::debug!(%account, told, kind = %notice.kind, "notice to linked devices");
        let devices = self.clone();
        let payload = format!("{}:{}", self.0.node, notice.id);
        tokio::spawn(async move {
            if let Err(e) = devices.store().notify_device(&payload).await {
                tracing::warn!(error = %e, "cannot wake the other nodes for a notice");
            }
        });
    }
}

impl ChannelState {
    fn backoff(&self, sends: u32) -> Duration {
        let cfg = &self.devices.0.cfg;
        let ms = cfg
            .resend_after_ms
            .saturating_mul(1u64 << sends.saturating_sub(1).min(16))
            .min(cfg.resend_max_ms);
        Duration::from_millis(ms)
    }

    /// Records deliveries in a short task of its own, one statement after another, so the
    /// connection's stream never waits on the database: a connection stalled on a slow device
    /// (or a WebSocket busy answering an acknowledgement) must never hold one of the store's
    /// connections. A burst (the open commands sent at connect) is one task, not one each.
    /// The task for a first send lets [`RECORD_DELIVERY_AFTER`] pass first: a connected device
    /// acknowledges within a millisecond or two, and its acknowledgement — which it waits on
    /// before running the command — should find the single SQLite writer free rather than
    /// queue behind this bookkeeping. Acknowledged by then (the usual case), the command needs
    /// no record here: its acknowledgement set its delivery time and count.
    /// When a command the stream re-sends turns out to be no longer open — acknowledged, maybe
    /// on another node, expired or finished — the stream is told to stop re-sending it.
    fn record_deliveries(&mut self, after: Duration) {
        if self.unrecorded.is_empty() {
            return;
        }
        let sent = std::mem::take(&mut self.unrecorded);
        let devices = self.devices.clone();
        let mailbox = self.mailbox.clone();
        let device = self.device.clone();
        let at = self.devices.now();
        tokio::spawn(async move {
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            for (id, tracked) in sent {
                if mailbox.take_acknowledged(&id) {
                    // The acknowledgement recorded the delivery.
                    continue;
                }
                match devices.store().mark_delivered(&id, at).await {
                    Ok(Some(c)) => {
                        if c.deliveries == 1 && c.state == "delivered" {
                            devices.publish_command(&c);
                        }
                        if tracked && c.state == "acknowledged" {
                            mailbox.settle(id);
                        }
                    }
                    Ok(None) => {
                        if tracked {
                            mailbox.settle(id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, device = %device, "recording a delivery failed");
                    }
                }
            }
        });
    }

    async fn next(&mut self) -> Option<ChannelFrame> {
        if let Some(h) = self.hello.take() {
            return Some(h);
        }
        if let Some(n) = self.notices.pop_front() {
            return Some(ChannelFrame::Notice(n));
        }
        loop {
            if let Some(frame) = self.pending.pop_front() {
                if self.outstanding.iter().any(|o| o.frame.id == frame.id) {
                    continue;
                }
                self.unrecorded
                    .push((frame.id.clone(), !frame.acknowledged));
                if self.pending.is_empty() {
                    self.record_deliveries(RECORD_DELIVERY_AFTER);
                }
                if !frame.acknowledged {
                    self.outstanding.push(Outstanding {
                        frame: frame.clone(),
                        sends: 1,
                        due: tokio::time::Instant::now() + self.backoff(1),
                    });
                }
                return Some(ChannelFrame::Command(frame));
            }
            // Nothing more to send now: what was sent gets recorded (a burst whose last frame
            // was skipped as already outstanding included).
            self.record_deliveries(RECORD_DELIVERY_AFTER);
            let due = self.outstanding.iter().map(|o| o.due).min();
            let mailbox = self.mailbox.clone();
            // The queue first: an acknowledgement waiting there stops a re-send that is due.
            tokio::select! {
                biased;
                wire = mailbox.recv() => match wire {
                    // Replaced by a newer connection, or the device was unlinked.
                    None => return None,
                    Some(Wire::Command(frame)) => self.pending.push_back(frame),
                    Some(Wire::Acked(id)) => self.outstanding.retain(|o| o.frame.id != id),
                    Some(Wire::Notice(n)) => return Some(ChannelFrame::Notice(n)),
                },
                () = async {
                    match due {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = tokio::time::Instant::now();
                    let Some(i) = self.outstanding.iter().position(|o| o.due <= now) else {
                        continue;
                    };
                    // Sent again now; if the command is no longer open, the delivery record
                    // says so and re-sending stops.
                    let sends = self.outstanding[i].sends + 1;
                    let wait = self.backoff(sends);
                    let o = &mut self.outstanding[i];
                    o.sends = sends;
                    o.due = now + wait;
                    let frame = o.frame.clone();
                    self.unrecorded.push((frame.id.clone(), true));
                    // A re-send is recorded at once: the device is not answering quickly.
                    self.record_deliveries(Duration::ZERO);
                    return Some(ChannelFrame::Command(frame));
                }
            }
        }
    }
}
