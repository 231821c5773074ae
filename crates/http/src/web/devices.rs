//! Find Device in the browser: the devices, where each one is, and the commands — locate, ring,
//! lost mode, erase — with their progress.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mica_devices::{CommandKind, CommandRequest, CommandView, DeviceView};
use mica_identity::Principal;
use serde::Deserialize;

use super::{check_csrf, human_time, page, percent_encode, Layout, PageError, WebForm, WebSession};
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

pub(crate) async fn list(
    State(app): State<AppState>,
    WebSession(p): WebSession,
) -> Result<Response, PageError> {
    let devices = app.devices.list(&p).await.map_err(ApiError::from)?;
    Ok(page(
        StatusCode::OK,
        &DevicesPage {
            layout: Layout::for_session(&app, &p, "Your devices"),
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
    /// Reload every few seconds while a command is on its way.
    refresh: bool,
    /// What the lost-mode form was filled with, when it is shown again with an error.
    message: String,
    phone: String,
}

#[derive(Deserialize, Default)]
pub(crate) struct ShowQuery {
    sent: Option<String>,
    cancelled: Option<String>,
    confirmed: Option<String>,
}

async fn device_page(
    app: &AppState,
    p: &Principal,
    id: &str,
    mut layout: Layout,
    form: Option<&CommandForm>,
) -> Result<DevicePage, PageError> {
    let d = app.devices.get(p, id).await.map_err(ApiError::from)?;
    let mut places = app
        .devices
        .locations(p, id, None, None)
        .await
        .map_err(ApiError::from)?;
    places.reverse();
    let commands = app.devices.commands(p, id).await.map_err(ApiError::from)?;
    let commands: Vec<CommandRow> = commands.iter().take(SHOWN).map(CommandRow::from).collect();
    layout.title.clone_from(&d.name);
    Ok(DevicePage {
        layout,
        device: DeviceRow::from(&d),
        os_version: d.os_version.clone(),
        lost_message: d.lost_mode.as_ref().and_then(|l| l.message.clone()),
        lost_phone: d.lost_mode.as_ref().and_then(|l| l.phone.clone()),
        last_place: d.last_location.as_ref().map(PlaceRow::from),
        places: places.iter().take(SHOWN).map(PlaceRow::from).collect(),
        refresh: commands.iter().any(|c| c.pending),
        commands,
        message: form.and_then(|f| f.message.clone()).unwrap_or_default(),
        phone: form.and_then(|f| f.phone.clone()).unwrap_or_default(),
    })
}

pub(crate) async fn show(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Device");
    layout.notice = match (q.sent.as_deref(), q.cancelled, q.confirmed) {
        (Some("locate"), _, _) => Some("Locating: the new place shows here as soon as the device reports it.".into()),
        (Some("ring"), _, _) => Some("Ringing: the device plays a sound, even on silent, until someone stops it on the device.".into()),
        (Some("lost_mode"), _, _) => Some("Lost mode is on its way: the device locks and shows your message and number.".into()),
        (Some("erase"), _, _) => Some("The erase is on its way. Once done, the device is unlinked; it stays bound to your account.".into()),
        (_, Some(_), _) => Some("Cancelled: the device will not run it.".into()),
        (_, _, Some(_)) => Some("Confirmed. For the next ten minutes you can erase a device from this browser.".into()),
        _ => None,
    };
    let page_ = device_page(&app, &p, &id, layout, None).await?;
    Ok(page(StatusCode::OK, &page_))
}

#[derive(Deserialize)]
pub(crate) struct CommandForm {
    csrf: String,
    kind: String,
    message: Option<String>,
    phone: Option<String>,
    /// The erase form's "I understand" box.
    confirm: Option<String>,
}

pub(crate) async fn send(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    Path(id): Path<String>,
    WebForm(form): WebForm<CommandForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let kind = match form.kind.as_str() {
        "locate" => CommandKind::Locate,
        "ring" => CommandKind::Ring,
        "lost_mode" => CommandKind::LostMode,
        "erase" => CommandKind::Erase,
        _ => {
            return Err(PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unknown action",
                "A device can be located, rung, put in lost mode or erased.",
            ))
        }
    };
    let filled = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let again = |error: String, status: StatusCode| {
        let app = app.clone();
        let p = p.clone();
        let id = id.clone();
        let form = &form;
        async move {
            let mut layout = Layout::for_session(&app, &p, "Device");
            layout.error = Some(error);
            let page_ = device_page(&app, &p, &id, layout, Some(form)).await?;
            Ok::<Response, PageError>(page(status, &page_))
        }
    };
    if kind == CommandKind::Erase && form.confirm.as_deref() != Some("yes") {
        return again(
            "Tick the box to confirm that you want to erase this device.".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let req = match kind {
        CommandKind::LostMode => CommandRequest {
            kind,
            message: filled(&form.message),
            phone: filled(&form.phone),
        },
        _ => CommandRequest {
            kind,
            message: None,
            phone: None,
        },
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
        Err(e) if e.code == "step_up_required" => Ok(Redirect::to(&format!(
            "/web/confirm?next={}",
            percent_encode(&format!("/web/devices/{id}"))
        ))
        .into_response()),
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(PageError::from(e)),
        Err(e) => again(super::sentence(&e.message), e.status).await,
    }
}

pub(crate) async fn cancel(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    Path((id, command)): Path<(String, String)>,
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
        Err(e) if e.code == "step_up_required" => Ok(Redirect::to(&format!(
            "/web/confirm?next={}",
            percent_encode(&format!("/web/devices/{id}"))
        ))
        .into_response()),
        Err(e) => {
            let mut layout = Layout::for_session(&app, &p, "Device");
            layout.error = Some(super::sentence(&e.message));
            let page_ = device_page(&app, &p, &id, layout, None).await?;
            Ok(page(e.status, &page_))
        }
    }
}
