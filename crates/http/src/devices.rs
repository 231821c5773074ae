//! Linked devices and Find Device: the owner's endpoints (`/devices…`), the device's own
//! endpoints (`/device/…`, with its device credential), and the activation status a reset
//! device asks for. The protocol is described in docs/design/devices.md.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use mica_core::Timestamp;
use mica_devices::{
    ActivationStatus, ChannelFrame, CommandRequest, CommandView, DeviceCaller, DeviceView,
    DevicesError, Hardware, LinkRequest, LinkRequestView, Linked, LocationReport, LocationView,
    Outcome, OwnerEvent,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Auth, Client, StreamToken};
use crate::AppState;

/// A comment this often keeps idle connections open through proxies; a device that hears
/// nothing for three times as long reconnects.
pub const HEARTBEAT: Duration = Duration::from_secs(25);

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_devices, link_device))
        .routes(routes!(owner_events))
        .routes(routes!(get_device, update_device, remove_device))
        .routes(routes!(locations, delete_locations))
        .routes(routes!(list_commands, send_command))
        .routes(routes!(get_command, cancel_command))
        .routes(routes!(command_channel))
        .routes(routes!(acknowledge))
        .routes(routes!(notice_seen))
        .routes(routes!(report_result))
        .routes(routes!(report_locations))
        .routes(routes!(heartbeat))
        .routes(routes!(exit_lost_mode))
        .routes(routes!(activation_status))
        .routes(routes!(request_link_code))
        .routes(routes!(poll_link_code))
        .routes(routes!(lookup_link_request))
        .routes(routes!(approve_link_request))
        .routes(routes!(deny_link_request))
}

impl From<DevicesError> for ApiError {
    fn from(e: DevicesError) -> Self {
        match e {
            DevicesError::Identity(e) => ApiError::from(e),
            DevicesError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                ApiError::internal()
            }
            e => {
                let status = StatusCode::from_u16(e.http_status())
                    .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
                let retry_after = match &e {
                    DevicesError::RateLimited { retry_after }
                    | DevicesError::LinkSlowDown { retry_after } => Some(*retry_after),
                    _ => None,
                };
                let mut err = ApiError::new(status, e.code(), e.to_string());
                err.retry_after = retry_after;
                err
            }
        }
    }
}

/// A device, from `Authorization: Bearer <device credential>` (`mdc_…`).
pub struct DeviceAuth(pub DeviceCaller);

impl<S> FromRequestParts<S> for DeviceAuth
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let app = AppState::from_ref(state);
        let credential = crate::extract::bearer(parts, "device credential")?;
        app.devices
            .authenticate(credential)
            .await
            .map(DeviceAuth)
            .map_err(ApiError::from)
    }
}

fn parse_time(field: &str, v: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    let Some(v) = v else {
        return Ok(None);
    };
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{field}: give the time as RFC 3339, e.g. 2026-11-30T10:00:00Z"),
            )
        })?;
    Ok(Some(Timestamp::from_offset(t)))
}

/// The devices linked to the account (and erased ones whose history is kept).
#[utoipa::path(get, path = "/devices", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = Vec<DeviceView>), (status = 401, body = ErrorBody)))]
async fn list_devices(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    Ok(Json(app.devices.list(&p).await?))
}

/// Links the device this session signed in on, and gives it its own credential. Refused with
/// `activation_locked` (403) when the device is bound to another account.
#[utoipa::path(post, path = "/devices", tag = "devices", security(("bearer" = [])),
    request_body = LinkRequest,
    responses((status = 201, body = Linked), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn link_device(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<LinkRequest>,
) -> Result<(StatusCode, Json<Linked>), ApiError> {
    let linked = app.devices.link(&p, req, &client.info(None)).await?;
    Ok((StatusCode::CREATED, Json(linked)))
}

#[utoipa::path(get, path = "/devices/{id}", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)))]
async fn get_device(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    Ok(Json(app.devices.get(&p, &id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    pub name: Option<String>,
    /// Turning Find Device off needs a fresh step-up and releases the activation lock.
    pub find_device: Option<bool>,
}

/// Renames a device, or turns Find Device on or off.
#[utoipa::path(patch, path = "/devices/{id}", tag = "devices", security(("bearer" = [])),
    request_body = DeviceUpdate,
    responses((status = 200, body = DeviceView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn update_device(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DeviceUpdate>,
) -> Result<Json<DeviceView>, ApiError> {
    let mut view = None;
    if let Some(name) = &req.name {
        view = Some(app.devices.rename(&p, &id, name).await?);
    }
    if let Some(on) = req.find_device {
        view = Some(
            app.devices
                .set_find_device(&p, &id, on, &client.info(None))
                .await?,
        );
    }
    match view {
        Some(v) => Ok(Json(v)),
        None => Ok(Json(app.devices.get(&p, &id).await?)),
    }
}

/// Removes a device (step-up required): its credential stops working, its history goes, and
/// its activation lock is released.
#[utoipa::path(delete, path = "/devices/{id}", tag = "devices", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_device(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.devices.remove(&p, &id, &client.info(None)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    /// From this time (RFC 3339), inclusive.
    pub from: Option<String>,
    /// Up to this time (RFC 3339), exclusive.
    pub to: Option<String>,
}

/// A device's location history for a time range, oldest first: at most 1,000 points, the newest
/// of the range (narrow `to` to page back).
#[utoipa::path(get, path = "/devices/{id}/locations", tag = "devices", security(("bearer" = [])),
    params(TimeRange),
    responses((status = 200, body = Vec<LocationView>), (status = 404, body = ErrorBody)))]
async fn locations(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiQuery(range): ApiQuery<TimeRange>,
) -> Result<Json<Vec<LocationView>>, ApiError> {
    let from = parse_time("from", range.from.as_deref())?;
    let to = parse_time("to", range.to.as_deref())?;
    Ok(Json(app.devices.locations(&p, &id, from, to).await?))
}

/// Deletes a device's location history.
#[utoipa::path(delete, path = "/devices/{id}/locations", tag = "devices", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_locations(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.devices.delete_locations(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A device's commands, newest first.
#[utoipa::path(get, path = "/devices/{id}/commands", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = Vec<CommandView>), (status = 404, body = ErrorBody)))]
async fn list_commands(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    Ok(Json(app.devices.commands(&p, &id).await?))
}

/// Sends a device a command: `locate`, `ring`, `lost_mode` (with `message` and `phone`) or
/// `erase` (step-up required). It is delivered now if the device is connected, else when it
/// next connects, unless it expires first.
#[utoipa::path(post, path = "/devices/{id}/commands", tag = "devices", security(("bearer" = [])),
    request_body = CommandRequest,
    responses((status = 201, body = CommandView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn send_command(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CommandRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let c = app
        .devices
        .command(&p, &id, req, &client.info(None))
        .await?;
    Ok((StatusCode::CREATED, Json(c)))
}

#[utoipa::path(get, path = "/devices/{id}/commands/{command}", tag = "devices",
    security(("bearer" = [])),
    responses((status = 200, body = CommandView), (status = 404, body = ErrorBody)))]
async fn get_command(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path((id, command)): Path<(String, String)>,
) -> Result<Json<CommandView>, ApiError> {
    let c = app.devices.command_state(&p, &command).await?;
    if c.device_id != id {
        return Err(ApiError::from(DevicesError::NotFound));
    }
    Ok(Json(c))
}

/// Cancels a command the device has not acknowledged yet: it is no longer sent, and never
/// runs. Cancelling lost mode or an erase needs a fresh step-up. Once the device has
/// acknowledged a command it cannot be cancelled (`409 command_not_cancellable`); an expired
/// one is `410 command_expired`; cancelling twice answers the cancelled command.
#[utoipa::path(delete, path = "/devices/{id}/commands/{command}", tag = "devices",
    security(("bearer" = [])),
    responses((status = 200, body = CommandView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 410, body = ErrorBody)))]
async fn cancel_command(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    Path((id, command)): Path<(String, String)>,
) -> Result<Json<CommandView>, ApiError> {
    let c = app
        .devices
        .cancel_command(&p, &id, &command, &client.info(None))
        .await?;
    Ok(Json(c))
}

/// The owner's live feed (Server-Sent Events): `command` events (a command changed state),
/// `device` events (linked, renamed, erased, removed, lost mode) and `location` events. A web
/// page keeps this open to update without reloading.
#[utoipa::path(get, path = "/devices/events", tag = "devices", security(("bearer" = [])),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream")))]
async fn owner_events(
    State(app): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // The feed carries where the devices are: it lasts as long as the token that opened it
    // (checked with every event and every few seconds), so signing out, a revoked session or a
    // deleted account ends it, and so does the token's expiry (the page reconnects with a
    // fresh one).
    let token = StreamToken::from_headers(&headers);
    let rx = app.devices.subscribe(&p);
    let ready = Event::default().event("ready").data("{}");
    let tick = StreamToken::ticks();
    let events = stream::unfold(Some((rx, tick, app, token)), |state| async move {
        let (mut rx, mut tick, app, token) = state?;
        loop {
            let received = tokio::select! {
                r = rx.recv() => Some(r),
                _ = tick.tick() => None,
            };
            if let Some(ended) = token.ended(&app) {
                return Some((Ok(ended), None));
            }
            let ev = match received {
                None => continue,
                Some(Ok(e)) => {
                    let name = match &e {
                        OwnerEvent::Command { .. } => "command",
                        OwnerEvent::Device { .. } => "device",
                        OwnerEvent::Location { .. } => "location",
                    };
                    Event::default()
                        .event(name)
                        .json_data(&e)
                        .unwrap_or_default()
                }
                // Fell behind: the page reloads its view.
                Some(Err(RecvError::Lagged(_))) => Event::default().event("reload").data("{}"),
                Some(Err(RecvError::Closed)) => return None,
            };
            return Some((Ok(ev), Some((rx, tick, app, token))));
        }
    });
    Sse::new(stream::once(async move { Ok(ready) }).chain(events))
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
}

/// The command channel of a linked device (device credential), as a WebSocket (send
/// `Upgrade: websocket`) or as Server-Sent Events (any other `GET`). First a `hello`; then a
/// `command` per command (every open one at connect, new ones as they are issued). Acknowledge
/// each by id; one not acknowledged is sent again with doubling gaps (1 s, 2 s, 4 s … up to
/// 30 s). Every 25 s a ping (WebSocket) or a comment (SSE) shows the connection is alive. A
/// `notice` (`{"id", "kind", "title", "text", "sent_at"}`, e.g. a request to recover the
/// account) is for the device's user to see: at connect the device is sent every notice it has
/// not said it showed (`POST /device/notices/{id}/seen`, or `{"type": "seen", "id"}` on a
/// WebSocket), then new ones as they come. A notice may come twice; show each id once.
///
/// On a WebSocket every message is a JSON text: the server sends `{"type": "hello", …}` and
/// `{"type": "command", …}` (the fields of a command frame), and the device may acknowledge
/// on the socket itself with `{"type": "ack", "id": "…"}`, answered by
/// `{"type": "ack", "id", "command"}` (run it) or `{"type": "ack", "id", "error": {"code",
/// "message"}}` (do not) — the same rules as `POST /device/commands/{id}/ack`. A WebSocket
/// costs the server far less per idle device than an open HTTP response: it is the channel for
/// fleets.
#[utoipa::path(get, path = "/device/command-channel", tag = "devices", security(("bearer" = [])),
    responses((status = 101, description = "WebSocket (JSON text messages)"),
        (status = 200, description = "text/event-stream", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn command_channel(
    State(app): State<AppState>,
    DeviceAuth(d): DeviceAuth,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let wants_ws = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let ws = match ws {
        Ok(ws) => Some(ws),
        Err(e) if wants_ws => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_websocket_upgrade",
                format!("this WebSocket upgrade cannot be accepted: {e}"),
            ))
        }
        Err(_) => None,
    };
    let frames = app.devices.connect(&d).await?;
    if let Some(ws) = ws {
        return Ok(ws
            // A device sends only small acknowledgements.
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(WS_MAX_MESSAGE)
            .max_frame_size(WS_MAX_MESSAGE)
            .on_upgrade(move |socket| ws_channel(app, d, frames, socket))
            .into_response());
    }
    let events = frames.map(|f| {
        let ev = match f {
            ChannelFrame::Hello {
                device_id,
                server_time,
            } => Event::default().event("hello").json_data(
                serde_json::json!({ "device_id": device_id, "server_time": server_time }),
            ),
            ChannelFrame::Command(c) => Event::default().event("command").json_data(&c),
            ChannelFrame::Notice(n) => Event::default().event("notice").json_data(&n),
        };
        Ok::<_, Infallible>(ev.unwrap_or_default())
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response())
}

/// What a WebSocket channel reads at once; messages from a device are small.
const WS_READ_BUFFER: usize = 1024;
/// The largest message a device may send on the channel.
const WS_MAX_MESSAGE: usize = 4096;
/// The close code when the server ends a device's channel (replaced by a newer connection of
/// the same device, or the device was unlinked): reconnect, and stop if the credential is
/// refused.
const WS_CLOSE_ENDED: u16 = 4000;

/// A message a device sends on its WebSocket channel.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum DeviceMessage {
    /// Acknowledge a command (as `POST /device/commands/{id}/ack`).
    Ack { id: String },
    /// A notice was shown (as `POST /device/notices/{id}/seen`).
    Seen { id: String },
}

/// One device's WebSocket: frames from its stream out, acknowledgements in, a ping every
/// [`HEARTBEAT`]; a device silent for three of them (not even a pong) is gone.
///
/// Waiting here (on an acknowledgement's database write, or on a slow socket) is safe because
/// the frame stream never waits on the database itself: it holds nothing while not polled.
async fn ws_channel(
    app: AppState,
    d: DeviceCaller,
    frames: impl Stream<Item = ChannelFrame>,
    mut socket: WebSocket,
) {
    let mut frames = std::pin::pin!(frames);
    let start = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(start + HEARTBEAT, HEARTBEAT);
    let mut heard = start;
    loop {
        let out = tokio::select! {
            f = frames.next() => match f {
                Some(f) => ws_json(&channel_json(f)),
                None => {
                    let close = CloseFrame { code: WS_CLOSE_ENDED, reason: "channel ended".into() };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    return;
                }
            },
            m = socket.recv() => {
                heard = tokio::time::Instant::now();
                match m {
                    Some(Ok(Message::Text(text))) => ws_json(&device_message(&app, &d, text.as_str()).await),
                    Some(Ok(Message::Binary(_))) => ws_json(&ws_error(None, "bad_message", "send JSON text messages")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                }
            },
            now = ping.tick() => {
                if now.duration_since(heard) > 3 * HEARTBEAT {
                    return;
                }
                Message::Ping(Default::default())
            }
        };
        // A device that stops reading is gone too.
        match tokio::time::timeout(HEARTBEAT, socket.send(out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

fn channel_json(f: ChannelFrame) -> serde_json::Value {
    match f {
        ChannelFrame::Hello {
            device_id,
            server_time,
        } => {
            serde_json::json!({ "type": "hello", "device_id": device_id, "server_time": server_time })
        }
        ChannelFrame::Command(c) => typed("command", serde_json::to_value(&c)),
        ChannelFrame::Notice(n) => typed("notice", serde_json::to_value(&n)),
    }
}

/// A frame's fields with its `type` added.
fn typed(kind: &str, v: serde_json::Result<serde_json::Value>) -> serde_json::Value {
    let mut v = v.unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), kind.into());
    }
    v
}

fn ws_json(v: &serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

fn ws_error(id: Option<&str>, code: &str, message: &str) -> serde_json::Value {
    let kind = if id.is_some() { "ack" } else { "error" };
    serde_json::json!({ "type": kind, "id": id, "error": { "code": code, "message": message } })
}

/// Answers what a device sent on its WebSocket.
async fn device_message(app: &AppState, d: &DeviceCaller, text: &str) -> serde_json::Value {
    let msg = match serde_json::from_str::<DeviceMessage>(text) {
        Ok(m) => m,
        Err(e) => {
            return ws_error(
                None,
                "bad_message",
                &format!("expected {{\"type\": \"ack\" or \"seen\", \"id\": \"…\"}}: {e}"),
            )
        }
    };
    match msg {
        DeviceMessage::Ack { id } => match app.devices.acknowledge(d, &id).await {
            Ok(c) => serde_json::json!({ "type": "ack", "id": id, "command": c }),
            Err(e) => {
                let e = ApiError::from(e);
                ws_error(Some(&id), e.code, &e.message)
            }
        },
        DeviceMessage::Seen { id } => match app.devices.notice_seen(d, &id).await {
            Ok(()) => serde_json::json!({ "type": "seen", "id": id }),
            Err(e) => {
                let e = ApiError::from(e);
                serde_json::json!({ "type": "seen", "id": id,
                    "error": { "code": e.code, "message": e.message } })
            }
        },
    }
}

/// The device has shown a notice to its user: it is not sent it again. Saying so twice is
/// fine; an id that is not one of the account's notices (or one withdrawn since) is `404`.
#[utoipa::path(post, path = "/device/notices/{id}/seen", tag = "devices",
    security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn notice_seen(
    State(app): State<AppState>,
    DeviceAuth(d): DeviceAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.devices.notice_seen(&d, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The device acknowledges a command; only a `200` lets it run it (once). A repeated
/// acknowledgement is `409 command_already_acknowledged`, and one after expiry
/// `410 command_expired`: in both cases the device must not run it.
#[utoipa::path(post, path = "/device/commands/{id}/ack", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = CommandView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn acknowledge(
    State(app): State<AppState>,
    DeviceAuth(d): DeviceAuth,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    Ok(Json(app.devices.acknowledge(&d, &id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    pub outcome: Outcome,
    /// Why it failed, for the owner.
    pub reason: Option<String>,
}

/// The device reports how an acknowledged command ended. A finished `erase` unlinks it.
#[utoipa::path(post, path = "/device/commands/{id}/result", tag = "devices",
    security(("bearer" = [])), request_body = CommandResult,
    responses((status = 200, body = CommandView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn report_result(
    State(app): State<AppState>,
    DeviceAuth(d): DeviceAuth,
    client: Client,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CommandResult>,
) -> Result<Json<CommandView>, ApiError> {
    let c = app
        .devices
        .finish(
            &d,
            &id,
            req.outcome,
            req.reason.as_deref(),
            &client.info(None),
        )
        .await?;
    Ok(Json(c))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationBatch {
    pub locations: Vec<LocationReport>,
}

/// The device reports where it is (1 to 100 positions; all are stored or none).
#[utoipa::path(post, path = "/device/locations", tag = "devices", security(("bearer" = [])),
    request_body = LocationBatch,
    responses((status = 204), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn report_locations(
    State(app): State<AppState>,
    DeviceAuth(d): DeviceAuth,
    ApiJson(req): ApiJson<LocationBatch>,
) -> Result<StatusCode, ApiError> {
    app.devices.report_locations(&d, &req.locations).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Percent, 0 … 100.
    pub battery: Option<i64>,
}

/// The device says it is alive, and how charged it is.
#[utoipa::path(post, path = "/device/heartbeat", tag = "devices", security(("bearer" = [])),
    request_body = Heartbeat, responses((status = 204), (status = 401, body = ErrorBody)))]
async fn heartbeat(
    State(app): State<AppState>,
    DeviceAuth(d): DeviceAuth,
    ApiJson(req): ApiJson<Heartbeat>,
) -> Result<StatusCode, ApiError> {
    app.devices.heartbeat(&d, req.battery).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitLostMode {
    /// The account's password, typed on the device.
    #[schema(value_type = String)]
    pub password: SecretString,
}

/// Leaves lost mode on the device: only the account password does it.
#[utoipa::path(post, path = "/device/lost-mode/exit", tag = "devices", security(("bearer" = [])),
    request_body = ExitLostMode,
    responses((status = 204), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn exit_lost_mode(
    State(app): State<AppState>,
    DeviceAuth(d): DeviceAuth,
    client: Client,
    ApiJson(req): ApiJson<ExitLostMode>,
) -> Result<StatusCode, ApiError> {
    app.devices
        .exit_lost_mode(&d, req.password, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationQuery {
    pub hardware: Hardware,
}

/// Whether a (freshly reset) device is activation-locked, and to which account (masked). No
/// sign-in needed; limited per address.
#[utoipa::path(post, path = "/activation/status", tag = "devices",
    request_body = ActivationQuery,
    responses((status = 200, body = ActivationStatus), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
async fn activation_status(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<ActivationQuery>,
) -> Result<Json<ActivationStatus>, ApiError> {
    Ok(Json(
        app.devices
            .activation_status(&req.hardware, &client.ip)
            .await?,
    ))
}

/// What a device shows and keeps when it asks to be linked by code.
#[derive(Serialize, ToSchema)]
pub struct LinkCodeResponse {
    /// Poll `POST /api/v1/device/link/token` with it. Keep it on the device.
    pub device_code: String,
    /// Show it: the owner enters it on a device already signed in to the account.
    #[schema(example = "BCDF-GHJK")]
    pub user_code: String,
    /// Where the owner is told to go to enter the code.
    pub verification_uri: String,
    /// Seconds before the codes expire.
    pub expires_in: u64,
    /// Seconds to wait between polls.
    pub interval: u64,
}

/// A device asks to be linked by code (RFC 8628's device authorization grant): no account or
/// password on the device. Show `user_code`; the owner approves it from a signed-in device
/// (`POST /api/v1/devices/link-requests/approve`), and the device polls for its credential.
#[utoipa::path(post, path = "/device/link", tag = "devices",
    request_body = LinkRequest,
    responses((status = 201, body = LinkCodeResponse), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
async fn request_link_code(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<LinkRequest>,
) -> Result<(StatusCode, Json<LinkCodeResponse>), ApiError> {
    let code = app
        .devices
        .request_link_code(req, &client.info(None))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(LinkCodeResponse {
            device_code: code.device_code,
            user_code: code.user_code,
            verification_uri: format!("{}/link", app.public_url.trim_end_matches('/')),
            expires_in: code.expires_in,
            interval: code.interval,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkTokenRequest {
    pub device_code: String,
}

/// A device linked by code: its credential and its own session.
#[derive(Serialize, ToSchema)]
pub struct CodeLinkedResponse {
    pub device: DeviceView,
    /// `Authorization: Bearer <credential>` on the device endpoints (shown once).
    pub credential: String,
    /// The device's session, for the account's other APIs (sync, files).
    pub session: crate::auth::TokenResponse,
}

/// The device polls, no more often than `interval`, until its owner decides. Answers
/// `authorization_pending` (400) until then, `slow_down` (429) when polled too often,
/// `access_denied` (403) when declined, `expired_token` (400) when the codes expired or were
/// used; once approved, links the device and returns its credential and session, once.
#[utoipa::path(post, path = "/device/link/token", tag = "devices",
    request_body = LinkTokenRequest,
    responses((status = 201, body = CodeLinkedResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn poll_link_code(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<LinkTokenRequest>,
) -> Result<(StatusCode, Json<CodeLinkedResponse>), ApiError> {
    let done = app
        .devices
        .poll_link(&req.device_code, &client.info(None))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CodeLinkedResponse {
            device: done.linked.device,
            credential: done.linked.credential,
            session: crate::auth::tokens(done.session, app.clock.now()),
        }),
    ))
}

/// The code a device shows, as its owner typed it (any case, dash optional). In the body,
/// not the address, so it stays out of logs.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCode {
    #[schema(example = "BCDF-GHJK")]
    pub user_code: String,
}

/// What device waits behind a user code: check it before approving. Unknown codes are
/// `link_code_unknown` (404), and limited per account.
#[utoipa::path(post, path = "/devices/link-requests/lookup", tag = "devices",
    security(("bearer" = [])), request_body = UserCode,
    responses((status = 200, body = LinkRequestView), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
async fn lookup_link_request(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<UserCode>,
) -> Result<Json<LinkRequestView>, ApiError> {
    Ok(Json(app.devices.link_request(&p, &req.user_code).await?))
}

/// Approves the device waiting behind a user code (step-up required): its next poll links it
/// to this account. `activation_locked` (403) when it is bound to another account.
#[utoipa::path(post, path = "/devices/link-requests/approve", tag = "devices",
    security(("bearer" = [])), request_body = UserCode,
    responses((status = 200, body = LinkRequestView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn approve_link_request(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<UserCode>,
) -> Result<Json<LinkRequestView>, ApiError> {
    Ok(Json(
        app.devices
            .approve_link(&p, &req.user_code, &client.info(None))
            .await?,
    ))
}

/// Declines the device waiting behind a user code: it is told so, and its codes stop working.
#[utoipa::path(post, path = "/devices/link-requests/deny", tag = "devices",
    security(("bearer" = [])), request_body = UserCode,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn deny_link_request(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<UserCode>,
) -> Result<StatusCode, ApiError> {
    app.devices.deny_link(&p, &req.user_code).await?;
    Ok(StatusCode::NO_CONTENT)
}
