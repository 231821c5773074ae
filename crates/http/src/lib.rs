//! Mica's HTTP API (axum), versioned under `/api/v1`, with its OpenAPI document generated from the
//! handlers and an interactive reference at `/api/docs`.
//!
//! Architecture invariants: handlers are thin — parse, call a domain service, map the result —
//! and never touch SQL; every error leaves as [`error::ApiError`] in one JSON shape.

pub mod account;
pub mod account_recovery;
pub mod auth;
mod backups;
mod commerce;
pub mod conns;
pub mod devices;
pub mod drive;
pub mod error;
pub mod extract;
mod feedback;
pub mod files;
mod groupware;
pub mod metrics;
mod oauth;
pub mod passkeys;
mod profile;
pub mod security;
pub mod sync;
mod web;
mod webdav;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mica_core::Clock;
use mica_identity::Identity;
use mica_store::Store;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;

/// What every handler can reach. Cloned for every request, so it is one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

pub struct AppInner {
    pub identity: Identity,
    pub cloud: mica_cloud::Cloud,
    /// WebDAV over the drive.
    pub dav: mica_dav::Dav,
    /// Linked devices and Find Device.
    pub devices: mica_devices::Devices,
    /// Credits, plans and purchases.
    pub commerce: mica_commerce::Commerce,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_forwarded: bool,
    /// Where people reach this server (the base of addresses it gives out).
    pub public_url: String,
    /// How long a request's body may wait for its next bytes before the request fails.
    pub body_idle_timeout: std::time::Duration,
    /// The open connections (shared with the listener), for the metrics.
    pub connections: Arc<conns::Connections>,
    pub metrics: Arc<metrics::Metrics>,
    /// The bearer token that opens `/metrics` to clients other than loopback ones.
    pub metrics_token: Option<secrecy::SecretString>,
}

/// Largest JSON body the API accepts.
pub const MAX_JSON_BODY: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mica API",
        description = "One account and a personal cloud for all of a person's devices. Errors always have the shape `{\"error\": {\"code\": \"…\", \"message\": \"…\"}}`.",
        license(name = "AGPL-3.0-or-later")
    ),
    modifiers(&BearerAuth),
    components(schemas(
        mica_cloud::category::Note,
        mica_cloud::category::Message,
        mica_cloud::category::Attachment,
        mica_cloud::category::Call,
        mica_cloud::category::Bookmark,
        mica_cloud::category::HistoryEntry,
        mica_cloud::category::WifiNetwork,
        mica_cloud::category::AppSettings,
        mica_cloud::category::GalleryItem,
        mica_cloud::category::Place,
        mica_cloud::category::Recording,
        mica_cloud::category::DriveEntry,
    )),
    tags(
        (name = "account", description = "Creating an account, recovering it, and the signed-in account"),
        (name = "sessions", description = "Signing in and out, tokens, sessions"),
        (name = "security", description = "Step-up verification, password, two-step verification, security log"),
        (name = "passkeys", description = "Passkeys (WebAuthn): adding, listing and removing them, and signing in with one"),
        (name = "sync", description = "The personal cloud: collections, pull and push, the recycle bin, usage, the device channel (see docs/design/sync.md)"),
        (name = "files", description = "Files: resumable uploads (tus 1.0), single-request uploads, downloads with Range (see docs/design/files.md)"),
        (name = "backups", description = "Device backups: incremental, kept per device, verified, restored wholly or in part onto a new device (see docs/design/backups.md)"),
        (name = "devices", description = "Linked devices and Find Device: locations, commands (locate, ring, lost mode, erase), the device's command channel, activation lock (see docs/design/devices.md)"),
        (name = "commerce", description = "Credits and storage plans: the wallet and its history, the plans on offer, buying and renewing one, purchases; the payment provider's webhook (see docs/design/commerce.md)"),
        (name = "feedback", description = "Feedback and bug reports to the operator, with attached logs, and the operator's answers (see docs/design/commerce.md)"),
        (name = "openid", description = "Mica as an OpenID Connect provider for the operator's other products: discovery, keys, tokens, userinfo, revocation, device authorization; the authorization endpoint is the portal page /web/authorize (see docs/design/oidc.md)"),
        (name = "health", description = "Probes")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("opaque")
                    .build(),
            ),
        );
    }
}

/// The API's routes and their OpenAPI description.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::new()
        .merge(auth::router())
        .merge(account_recovery::router())
        .merge(account::router())
        .merge(security::router())
        .merge(passkeys::router())
        .merge(sync::router())
        .merge(files::router())
        .merge(backups::router())
        .merge(commerce::router())
        .merge(feedback::router())
        .merge(drive::router())
        .merge(devices::router())
        .merge(profile::router());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .merge(oauth::router())
        .routes(utoipa_axum::routes!(healthz))
        .routes(utoipa_axum::routes!(readyz))
        .split_for_parts()
}

/// The OpenAPI document, as served at `/api/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// The whole application as one service, middleware included.
pub type App = BoxCloneSyncService<axum::extract::Request, Response, Infallible>;

/// The whole application: the routes, wrapped once in the middleware (around the router, not
/// around each route, so a request does not clone the middleware stack) — except two small
/// layers that must see the route a request matched, or its decoded path: the address check
/// and the metrics' [`metrics::Track`].
pub fn app(state: AppState) -> App {
    let body_idle_timeout = state.body_idle_timeout;
    let (api, doc) = api();
    let router = api
        .merge(SwaggerUi::new("/api/docs").url("/api/v1/openapi.json", doc))
        .route("/", get(index))
        .route("/link", get(link_page))
        .merge(web::routes(&state.public_url))
        .merge(webdav::routes())
        .merge(groupware::routes())
        .route("/metrics", get(metrics::scrape))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(refuse_control_characters))
        .layer(axum::middleware::from_fn(oauth::cors))
        // Around each route and the fallback: counted by the pattern the route matched.
        .layer(metrics::Track(state.metrics.clone()))
        .with_state(state);
    let x_request_id = HeaderName::from_static("x-request-id");
    let svc = ServiceBuilder::new()
        .map_response(|r: Response<_>| r.map(axum::body::Body::new))
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, header::COOKIE]))
        .layer(SetRequestIdLayer::new(x_request_id.clone(), RequestIds::new()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    // The path only: query strings may carry user input. A WebDAV path holds
                    // the names of a person's folders and files, stored sealed: cut to its mount.
                    tracing::info_span!("request", method = %req.method(), path = %loggable_path(req.uri().path()), request_id = %id)
                })
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                ),
        )
        .layer(PropagateRequestIdLayer::new(x_request_id))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| -> Response {
            tracing::error!("a request handler panicked");
            ApiError::internal().into_response()
        }))
        .map_response(security_headers)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        // A body that stops arriving fails its request (an upload keeps what it received)
        // instead of holding the request for ever.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_idle_timeout))
        .map_request(|r: Request<_>| r.map(axum::body::Body::new))
        .service(router);
    // Outermost, so it sees the body that goes out: when it has all gone, the connection
    // waits for its next request head, under that deadline.
    BoxCloneSyncService::new(conns::HeadDeadline {
        inner: BoxCloneSyncService::new(svc),
        body_grace: body_idle_timeout,
    })
}

/// What a request log line shows of a path: all of it, except below a WebDAV mount
/// (`/dav/files/{account}/…`, and the address books and calendars), whose names are personal
/// data.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    for mount in ["/dav/files/", "/dav/addressbooks/", "/dav/calendars/"] {
        if let Some(rest) = path.strip_prefix(mount) {
            if let Some((account, below)) = rest.split_once('/') {
                if !below.is_empty() {
                    return format!("{mount}{account}/…").into();
                }
            }
        }
    }
    path.into()
}

/// Headers every response carries.
fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    r
}

/// Headers of responses that carry what users stored (the drive over WebDAV, file downloads):
/// whatever its type says, an HTML file served from this origin must not run as a page of it,
/// where it could read the portal's pages and post its forms.
pub(crate) async fn user_content_headers(mut r: Response) -> Response {
    r.headers_mut()
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "sandbox; default-src 'none'; frame-ancestors 'none'",
        ));
    r
}

/// Request ids: a random per-process prefix and a counter (unique, and far cheaper than a
/// random UUID per request, which costs an OS entropy call).
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        let prefix = mica_core::crypto::random_token_string(6);
        RequestIds {
            prefix: prefix.into(),
            next: Arc::default(),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _req: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready"), (status = 503, description = "Database unreachable")))]
async fn readyz(State(app): State<AppState>) -> Response {
    let ping = tokio::time::timeout(Duration::from_secs(3), app.store.ping()).await;
    match ping {
        Ok(Ok(())) => {
            Json(serde_json::json!({ "status": "ready", "database": app.store.backend().name() }))
                .into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            not_ready()
        }
        Err(_) => not_ready(),
    }
}

fn not_ready() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the database is not reachable",
    )
    .into_response()
}

/// The server's front door: a browser goes to the portal, a program gets the API's addresses.
async fn index(headers: axum::http::HeaderMap) -> Response {
    let browser = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if browser {
        return axum::response::Redirect::to("/web/").into_response();
    }
    Json(serde_json::json!({
        "name": "Mica",
        "api": "/api/v1",
        "openapi": "/api/v1/openapi.json",
        "docs": "/api/docs/",
        "web": "/web/",
    }))
    .into_response()
}

/// Where a device being linked by code sends its owner (`verification_uri`): how to approve
/// it. Static, no script, no form: nothing here can be framed or injected.
async fn link_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        LINK_PAGE,
    )
}

const LINK_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Link a device to your Mica account</title></head>
<body>
<main>
<h1>Link a device</h1>
<p>The device you are setting up shows a code such as <strong>BCDF-GHJK</strong>, valid for ten minutes.</p>
<ol>
<li>On a phone or computer already signed in to your Mica account, enter the code where its app offers to link a device.
On a computer linked with the Mica agent, run <code>mica agent approve agent.toml BCDF-GHJK</code>.</li>
<li>Check that the name and model shown are those of the device in front of you.</li>
<li>Confirm it is you (a code sent to your email, or your authenticator app), and approve.</li>
</ol>
<p>The device then links itself within a few seconds. Never enter a code that someone sent you:
it would link their device to your account.</p>
</main>
</body>
</html>
"#;

/// Whether `text`, percent-decoded, holds a control character (`%00`, `%0A`, `%7F`…).
fn escapes_a_control_character(text: &str) -> bool {
    let b = text.as_bytes();
    (0..b.len()).any(|i| {
        b[i] == b'%'
            && b.get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .is_some_and(|c| c < 0x20 || c == 0x7f)
    })
}

/// Whether the path, its escapes decoded, is UTF-8 (every id and name is text).
fn decodes_to_text(path: &str) -> bool {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// Refuses an address whose path or query holds an escaped control character, or whose path
/// is not text once decoded: no id, name, token or path Mica knows is either, PostgreSQL
/// refuses a NUL in any text it is asked to compare, and the router's own answer to a path
/// that is not UTF-8 is plain text without a code.
async fn refuse_control_characters(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = req.uri();
    if escapes_a_control_character(uri.path())
        || uri.query().is_some_and(escapes_a_control_character)
    {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_address",
            "the address holds a control character (such as %00), which no id or name contains",
        )
        .into_response();
    }
    if !decodes_to_text(uri.path()) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_address",
            "the address escapes bytes that are not UTF-8 text (such as %FF), which no id or name is",
        )
        .into_response();
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this address does not accept this method",
    )
}

#[cfg(test)]
mod tests {
    use super::loggable_path;

    #[test]
    fn webdav_names_stay_out_of_the_request_log() {
        assert_eq!(
            loggable_path("/dav/files/123/Taxes/2025/letter.pdf"),
            "/dav/files/123/…"
        );
        assert_eq!(loggable_path("/dav/files/123/"), "/dav/files/123/");
        assert_eq!(loggable_path("/api/v1/drive/d_x"), "/api/v1/drive/d_x");
    }
}
