//! Find Device in the browser: the devices, where each one is, and the commands — locate, ring,
//! lost mode, erase — with their progress.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mica_devices::{CommandKind, CommandRequest, CommandView, DeviceView};
use mica_identity::Principal;
use serde::Deserialize;

use std::time::Duration;

use mica_core::Timestamp;

use super::{
    check_csrf, human_time, page, percent_encode, Layout, PageError, WebForm, WebPath, WebQuery,
    WebSession,
};
use crate::error::ApiError;
use crate::extract::Client;
use crate::AppState;

/// How many of the newest places and commands a device's page lists.
const SHOWN: usize = 10;

/// A device as a row of the list.
pub(crate) struct DeviceRow {
    id: String,
    name: String,
    model: String,
    erased: bool,
    online: bool,
    seen: String,
    find_device: bool,
    battery: Option<i64>,
    lost: bool,
}

fn seen(d: &DeviceView) -> String {
    match (d.online, &d.last_seen_at) {
        (true, _) => "Online now".into(),
        (false, Some(t)) => format!("Last seen {}", human_time(t)),
        (false, None) => "Never seen".into(),
    }
}

impl From<&DeviceView> for DeviceRow {
    fn from(d: &DeviceView) -> Self {
        DeviceRow {
            id: d.id.clone(),
            name: d.name.clone(),
            model: d.model.clone(),
            erased: d.state == "erased",
            online: d.online,
            seen: seen(d),
            find_device: d.find_device,
            battery: d.battery,
            lost: d.lost_mode.is_some(),
        }
    }
}

#[derive(Template)]
#[template(path = "web/devices.html")]
struct DevicesPage {
    layout: Layout,
    devices: Vec<DeviceRow>,
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    removed: Option<String>,
}

pub(crate) async fn list(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<ListQuery>,
) -> Result<Response, PageError> {
    let devices = app.devices.list(&p).await.map_err(ApiError::from)?;
    let mut layout = Layout::for_session(&app, &p, "Your devices");
    if q.removed.is_some() {
        layout.notice = Some(
            "The device is removed: it no longer signs in, its history is gone, and it is no \
             longer bound to your account."
                .into(),
        );
    }
    Ok(page(
        StatusCode::OK,
        &DevicesPage {
            layout,
            devices: devices.iter().map(DeviceRow::from).collect(),
        },
    ))
}

/// A place, as the page shows it.
pub(crate) struct PlaceRow {
    lat: String,
    lon: String,
    accuracy: String,
    at: String,
    source: &'static str,
    map: String,
}

impl From<&mica_devices::LocationView> for PlaceRow {
    fn from(l: &mica_devices::LocationView) -> Self {
        PlaceRow {
            lat: format!("{:.5}", l.lat),
            lon: format!("{:.5}", l.lon),
            accuracy: format!("{:.0}", l.accuracy),
            at: human_time(&l.at),
            source: match l.source {
                mica_devices::LocationSource::Gps => "GPS",
                mica_devices::LocationSource::Network => "network",
                mica_devices::LocationSource::LastKnown => "last known",
            },
            map: format!(
                "https://www.openstreetmap.org/?mlat={lat:.5}&mlon={lon:.5}#map=17/{lat:.5}/{lon:.5}",
                lat = l.lat,
                lon = l.lon
            ),
        }
    }
}

/// A command, as the page shows it.
pub(crate) struct CommandRow {
    id: String,
    what: &'static str,
    state: String,
    /// Still on its way: the page refreshes itself until it is not.
    pending: bool,
    /// When it was sent (RFC 3339).
    created_at: String,
    /// The owner may still cancel it.
    cancellable: bool,
    sent: String,
    finished: Option<String>,
    reason: Option<String>,
}

fn what(kind: CommandKind) -> &'static str {
    match kind {
        CommandKind::Locate => "Locate",
        CommandKind::Ring => "Ring",
        CommandKind::LostMode => "Lost mode",
        CommandKind::Erase => "Erase",
    }
}

impl From<&CommandView> for CommandRow {
    fn from(c: &CommandView) -> Self {
        let state = match c.state.as_str() {
            "queued" => "Waiting for the device",
            "delivered" => "Sent to the device",
            "acknowledged" => match c.kind {
                CommandKind::Ring => "Ringing until stopped on the device",
                CommandKind::Locate => "Locating",
                CommandKind::LostMode => "Locking",
                CommandKind::Erase => "Erasing",
            },
            "done" => "Done",
            "failed" => "Failed",
            "expired" => "Expired before the device came online",
            "cancelled" => "Cancelled",
            other => other,
        };
        CommandRow {
            id: c.id.clone(),
            what: what(c.kind),
            state: state.into(),
            pending: matches!(c.state.as_str(), "queued" | "delivered" | "acknowledged"),
            created_at: c.created_at.clone(),
            cancellable: matches!(c.state.as_str(), "queued" | "delivered"),
            sent: human_time(&c.created_at),
            finished: c.finished_at.as_deref().map(human_time),
            reason: c.reason.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "web/device.html")]
struct DevicePage {
    layout: Layout,
    device: DeviceRow,
    os_version: String,
    lost_message: Option<String>,
    lost_phone: Option<String>,
    last_place: Option<PlaceRow>,
    places: Vec<PlaceRow>,
    commands: Vec<CommandRow>,
    /// Reload every few seconds while a command sent a moment ago is on its way.
    refresh: bool,
}

/// How long after sending a command its device's page keeps following it by reloading
/// itself: long enough for a device that is online; a device that is off gets it when it next
/// connects, which a later visit shows.
const FOLLOW_FOR: Duration = Duration::from_secs(5 * 60);

#[derive(Deserialize, Default)]
pub(crate) struct ShowQuery {
    sent: Option<String>,
    cancelled: Option<String>,
    confirmed: Option<String>,
    /// What a management form changed.
    changed: Option<String>,
}

async fn device_page(
    app: &AppState,
    p: &Principal,
    id: &str,
    mut layout: Layout,
) -> Result<DevicePage, PageError> {
    let d = app.devices.get(p, id).await.map_err(ApiError::from)?;
    let mut places = app
        .devices
        .recent_locations(p, id, SHOWN)
        .await
        .map_err(ApiError::from)?;
    places.reverse();
    let commands = app.devices.commands(p, id).await.map_err(ApiError::from)?;
    let commands: Vec<CommandRow> = commands.iter().take(SHOWN).map(CommandRow::from).collect();
    let since = app.clock.now().minus(FOLLOW_FOR);
    let recent = |c: &CommandRow| {
        time::OffsetDateTime::parse(
            &c.created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .is_ok_and(|t| Timestamp::from_offset(t) >= since)
    };
    layout.title.clone_from(&d.name);
    Ok(DevicePage {
        // Never on a page that answers a form: the browser would reload the form's address.
        refresh: layout.error.is_none() && commands.iter().any(|c| c.pending && recent(c)),
        layout,
        device: DeviceRow::from(&d),
        os_version: d.os_version.clone(),
        lost_message: d.lost_mode.as_ref().and_then(|l| l.message.clone()),
        lost_phone: d.lost_mode.as_ref().and_then(|l| l.phone.clone()),
        last_place: d.last_location.as_ref().map(PlaceRow::from),
        places: places.iter().take(SHOWN).map(PlaceRow::from).collect(),
        commands,
    })
}

pub(crate) async fn show(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
    WebQuery(q): WebQuery<ShowQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Device");
    let changed = match q.changed.as_deref() {
        Some("name") => Some("Renamed."),
        Some("find_on") => Some("Find Device is on: the device reports its place when you ask, and stays bound to your account through a reset."),
        Some("find_off") => Some("Find Device is off: the device can no longer be located, and a reset frees it from your account."),
        Some("places") => Some("The device's location history is deleted."),
        _ => None,
    };
    layout.notice = match (q.sent.as_deref(), q.cancelled, q.confirmed) {
        _ if changed.is_some() => changed.map(str::to_owned),
        (Some("locate"), _, _) => Some("Locating: the new place shows here as soon as the device reports it.".into()),
        (Some("ring"), _, _) => Some("Ringing: the device plays a sound, even on silent, until someone stops it on the device.".into()),
        (Some("lost_mode"), _, _) => Some("Lost mode is on its way: the device locks and shows your message and number.".into()),
        (Some("erase"), _, _) => Some("The erase is on its way. Once done, the device is unlinked; it stays bound to your account.".into()),
        (_, Some(_), _) => Some("Cancelled: the device will not run it.".into()),
        (_, _, Some(_)) => Some("Confirmed. For the next ten minutes you can erase or remove a device, or turn Find Device off, from this browser.".into()),
        _ => None,
    };
    let page_ = device_page(&app, &p, &id, layout).await?;
    Ok(page(StatusCode::OK, &page_))
}

/// Which of a device's form pages: each on a page of its own, which never reloads itself, so
/// what a person types stays there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FormKind {
    LostMode,
    Erase,
    Manage,
}

#[derive(Template)]
#[template(path = "web/device_form.html")]
struct DeviceFormPage {
    layout: Layout,
    which: &'static str,
    device: DeviceRow,
    has_places: bool,
    /// What the lost-mode form was filled with, when it is shown again with an error.
    message: String,
    phone: String,
}

async fn form_page(
    app: &AppState,
    p: &Principal,
    id: &str,
    kind: FormKind,
    status: StatusCode,
    error: Option<String>,
    filled: Option<&CommandForm>,
) -> Result<Response, PageError> {
    let d = app.devices.get(p, id).await.map_err(ApiError::from)?;
    let (which, title) = match kind {
        FormKind::LostMode => ("lost_mode", "Lost mode"),
        FormKind::Erase => ("erase", "Erase"),
        FormKind::Manage => ("manage", "Manage"),
    };
    let mut layout = Layout::for_session(app, p, &format!("{title} · {}", d.name));
    layout.error = error;
    Ok(page(
        status,
        &DeviceFormPage {
            layout,
            which,
            has_places: d.last_location.is_some(),
            device: DeviceRow::from(&d),
            message: filled.and_then(|f| f.message.clone()).unwrap_or_default(),
            phone: filled.and_then(|f| f.phone.clone()).unwrap_or_default(),
        },
    ))
}

pub(crate) async fn lost_mode_page(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
) -> Result<Response, PageError> {
    form_page(
        &app,
        &p,
        &id,
        FormKind::LostMode,
        StatusCode::OK,
        None,
        None,
    )
    .await
}

pub(crate) async fn erase_page(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
) -> Result<Response, PageError> {
    form_page(&app, &p, &id, FormKind::Erase, StatusCode::OK, None, None).await
}

pub(crate) async fn manage_page(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
) -> Result<Response, PageError> {
    form_page(&app, &p, &id, FormKind::Manage, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
pub(crate) struct CommandForm {
    #[serde(default)]
    csrf: String,
    kind: String,
    message: Option<String>,
    phone: Option<String>,
    /// The erase form's "I understand" box.
    confirm: Option<String>,
}

/// Where a change that needs a fresh step-up sends the browser: to confirm it's you, then back
/// to the device's page.
fn confirm_first(id: &str) -> Response {
    Redirect::to(&format!(
        "/web/confirm?next={}",
        percent_encode(&format!("/web/devices/{id}"))
    ))
    .into_response()
}

/// Shows the page a form came from again, with what went wrong (another account's device is
/// not found).
async fn form_error(
    app: &AppState,
    p: &Principal,
    id: &str,
    kind: Option<FormKind>,
    e: ApiError,
    filled: Option<&CommandForm>,
) -> Result<Response, PageError> {
    if e.status == StatusCode::NOT_FOUND {
        return Err(PageError::from(e));
    }
    let message = super::sentence(&e.message);
    match kind {
        Some(kind) => form_page(app, p, id, kind, e.status, Some(message), filled).await,
        None => {
            let mut layout = Layout::for_session(app, p, "Device");
            layout.error = Some(message);
            let page_ = device_page(app, p, id, layout).await?;
            Ok(page(e.status, &page_))
        }
    }
}

pub(crate) async fn send(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<CommandForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let (kind, from) = match form.kind.as_str() {
        "locate" => (CommandKind::Locate, None),
        "ring" => (CommandKind::Ring, None),
        "lost_mode" => (CommandKind::LostMode, Some(FormKind::LostMode)),
        "erase" => (CommandKind::Erase, Some(FormKind::Erase)),
        _ => {
            return Err(PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unknown action",
                "A device can be located, rung, put in lost mode or erased.",
            ))
        }
    };
    if kind == CommandKind::Erase {
        if let Err(e) = super::ticked(form.confirm.as_deref(), "you want to erase this device") {
            return form_error(&app, &p, &id, from, e, None).await;
        }
    }
    // A message typed on two lines is one line on the device's lock screen.
    let filled = |v: &Option<String>| {
        v.as_deref()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|v| !v.is_empty())
    };
    let req = CommandRequest {
        kind,
        message: (kind == CommandKind::LostMode)
            .then(|| filled(&form.message))
            .flatten(),
        phone: (kind == CommandKind::LostMode)
            .then(|| filled(&form.phone))
            .flatten(),
    };
    match app
        .devices
        .command(&p, &id, req, &client.info(None))
        .await
        .map_err(ApiError::from)
    {
        Ok(_) => Ok(Redirect::to(&format!(
            "/web/devices/{}?sent={}",
            percent_encode(&id),
            form.kind
        ))
        .into_response()),
        Err(e) if e.code == "step_up_required" => Ok(confirm_first(&id)),
        Err(e) => form_error(&app, &p, &id, from, e, Some(&form)).await,
    }
}

pub(crate) async fn cancel(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebPath((id, command)): WebPath<(String, String)>,
    WebForm(form): WebForm<super::account::CsrfForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, form.csrf())?;
    let c = app.devices.command_state(&p, &command).await;
    match c {
        Ok(c) if c.device_id == id => {}
        _ => return Err(PageError::not_found()),
    }
    match app
        .devices
        .cancel_command(&p, &id, &command, &client.info(None))
        .await
        .map_err(ApiError::from)
    {
        Ok(_) => Ok(
            Redirect::to(&format!("/web/devices/{}?cancelled=1", percent_encode(&id)))
                .into_response(),
        ),
        Err(e) if e.code == "step_up_required" => Ok(confirm_first(&id)),
        Err(e) => form_error(&app, &p, &id, None, e, None).await,
    }
}

#[derive(Deserialize)]
pub(crate) struct SettingsForm {
    #[serde(default)]
    csrf: String,
    /// A new name…
    name: Option<String>,
    /// …or `on` / `off`.
    find_device: Option<String>,
}

/// Renames a device, or turns Find Device on or off (off needs a fresh step-up).
pub(crate) async fn settings(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<SettingsForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let (result, changed) = match (form.name.as_deref(), form.find_device.as_deref()) {
        (Some(name), None) => (app.devices.rename(&p, &id, name.trim()).await, "name"),
        (None, Some(on @ ("on" | "off"))) => (
            app.devices
                .set_find_device(&p, &id, on == "on", &client.info(None))
                .await,
            if on == "on" { "find_on" } else { "find_off" },
        ),
        _ => {
            let e = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "give a new name, or turn Find Device on or off",
            );
            return form_error(&app, &p, &id, Some(FormKind::Manage), e, None).await;
        }
    };
    match result.map_err(ApiError::from) {
        Ok(_) => Ok(Redirect::to(&format!(
            "/web/devices/{}?changed={changed}",
            percent_encode(&id)
        ))
        .into_response()),
        Err(e) if e.code == "step_up_required" => Ok(confirm_first(&id)),
        Err(e) => form_error(&app, &p, &id, Some(FormKind::Manage), e, None).await,
    }
}

#[derive(Deserialize)]
pub(crate) struct ConfirmedForm {
    #[serde(default)]
    csrf: String,
    /// The form's "I understand" box.
    confirm: Option<String>,
}

/// Deletes a device's location history (the box ticked).
pub(crate) async fn delete_places(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<ConfirmedForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    if let Err(e) = super::ticked(
        form.confirm.as_deref(),
        "you want to delete the location history",
    ) {
        return form_error(&app, &p, &id, Some(FormKind::Manage), e, None).await;
    }
    match app
        .devices
        .delete_locations(&p, &id)
        .await
        .map_err(ApiError::from)
    {
        Ok(_) => Ok(Redirect::to(&format!(
            "/web/devices/{}?changed=places",
            percent_encode(&id)
        ))
        .into_response()),
        Err(e) => form_error(&app, &p, &id, Some(FormKind::Manage), e, None).await,
    }
}

/// Removes a device (a fresh step-up first): its credential stops working, its history goes,
/// and its activation lock is released — what an owner does before selling or giving it away.
pub(crate) async fn remove(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<ConfirmedForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    if let Err(e) = super::ticked(form.confirm.as_deref(), "you want to remove this device") {
        return form_error(&app, &p, &id, Some(FormKind::Manage), e, None).await;
    }
    match app
        .devices
        .remove(&p, &id, &client.info(None))
        .await
        .map_err(ApiError::from)
    {
        Ok(()) => Ok(Redirect::to("/web/devices?removed=1").into_response()),
        Err(e) if e.code == "step_up_required" => Ok(confirm_first(&id)),
        Err(e) => form_error(&app, &p, &id, Some(FormKind::Manage), e, None).await,
    }
}
