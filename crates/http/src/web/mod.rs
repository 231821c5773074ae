//! The web portal (CL-8): pages rendered on the server under `/web`, for a person at a browser —
//! above all the one whose phone is lost: sign in, see where each device is, ring it, lock it
//! with a message, or erase it. See docs/design/web.md.
//!
//! Invariants:
//! - The pages run no script: every action is a form posted to the server, which answers with a
//!   redirect (post/redirect/get). The Content-Security-Policy allows only this server's style
//!   sheet and forms.
//! - A browser is signed in by one cookie (`HttpOnly`, `SameSite=Lax`, host-only and `Secure`
//!   behind HTTPS) bound to an ordinary session of at most 12 hours: it is listed with the
//!   account's sessions, and signing out, revoking it elsewhere, a password change or a
//!   suspension ends it at once.
//! - Every form posted by a signed-in browser carries its session's anti-forgery token, and a
//!   post from another site (`Sec-Fetch-Site: cross-site`, or another `Origin`) is refused
//!   before any handler runs.
//! - Like the API, the portal calls the domain services only, so it sees exactly what the API
//!   sees, with the same rules (step-up before an erase, other accounts' ids are not found).

mod account;
mod apps;
mod backups;
mod bin;
mod devices;
mod feedback;
mod plan;
mod security;
mod themes;

use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::Router;
use mica_identity::Principal;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// The cookie that holds a browser's session: its name, its path, and its `Secure` attribute.
/// Behind HTTPS it is `__Host-mica_session` for the whole site: a browser takes a cookie of
/// that name only from this very host, over HTTPS, without a `Domain`, so no sibling domain
/// and no plain-HTTP page can plant one in its place (to sign a victim into another account,
/// or keep them out of theirs). Over plain HTTP (a server on a laptop) the prefix is not
/// possible, and the cookie is kept to `/web`.
struct CookieSpec {
    name: &'static str,
    path: &'static str,
    secure: &'static str,
}

fn cookie_spec(public_url: &str) -> CookieSpec {
    if public_url.starts_with("https://") {
        CookieSpec {
            name: "__Host-mica_session",
            path: "/",
            secure: "; Secure",
        }
    } else {
        CookieSpec {
            name: "mica_session",
            path: "/web",
            secure: "",
        }
    }
}

/// Longest `next` address a sign-in or confirmation returns to.
/// (An app's sign-in request — its redirect address, state and nonce of up to 512 bytes each,
/// escaped — can run to about 5,000 characters.)
const MAX_NEXT: usize = 8192;

/// The portal's routes.
pub(crate) fn routes(public_url: &str) -> Router<AppState> {
    let app_origin = PublicOrigin(public_origin(public_url));
    Router::new()
        .route("/web", get(|| async { Redirect::to("/web/") }))
        .route("/web/", get(account::overview))
        .route(
            "/web/sign-in",
            get(account::sign_in_page).post(account::sign_in),
        )
        .route("/web/sign-in/two-step", post(account::two_step))
        .route("/web/sign-in/send-code", post(account::two_step_send))
        .route("/web/sign-out", post(account::sign_out))
        .route("/web/confirm", get(account::confirm_page))
        .route("/web/confirm/send", post(account::confirm_send))
        .route("/web/confirm/verify", post(account::confirm_verify))
        .route("/web/security", get(security::show))
        .route("/web/security/password", post(security::change_password))
        .route("/web/sessions", get(account::sessions))
        .route("/web/sessions/{id}/revoke", post(account::revoke_session))
        .route("/web/devices", get(devices::list))
        .route("/web/devices/{id}", get(devices::show))
        .route("/web/devices/{id}/commands", post(devices::send))
        .route(
            "/web/devices/{id}/commands/{command}/cancel",
            post(devices::cancel),
        )
        .route("/web/devices/{id}/lost-mode", get(devices::lost_mode_page))
        .route("/web/devices/{id}/erase", get(devices::erase_page))
        .route("/web/devices/{id}/manage", get(devices::manage_page))
        .route("/web/devices/{id}/settings", post(devices::settings))
        .route(
            "/web/devices/{id}/places/delete",
            post(devices::delete_places),
        )
        .route("/web/devices/{id}/remove", post(devices::remove))
        .route("/web/backups", get(backups::list))
        .route("/web/backups/{id}/verify", post(backups::verify))
        .route("/web/backups/{id}/delete", post(backups::delete))
        .route("/web/plan", get(plan::show))
        .route("/web/plan/buy", post(plan::buy))
        .route("/web/plan/renewal", post(plan::renewal))
        .route("/web/feedback", get(feedback::show).post(feedback::send))
        .route("/web/themes", get(themes::list))
        .route("/web/themes/{id}/get", post(themes::get_theme))
        .route("/web/themes/{id}/package", get(themes::package))
        .route("/web/themes/{id}/preview", get(themes::preview))
        .route("/web/bin", get(bin::list))
        .route("/web/bin/{id}/restore", post(bin::restore))
        .route("/web/bin/{id}/purge", post(bin::purge))
        .route("/web/authorize", get(apps::authorize).post(apps::decide))
        .route(
            "/web/device",
            get(apps::device_page).post(apps::device_decide),
        )
        .route("/web/apps", get(apps::apps))
        .route("/web/apps/{id}/revoke", post(apps::revoke))
        .route("/web/static/mica.css", get(style_sheet))
        .route("/web/{*rest}", any(|| async { PageError::not_found() }))
        .layer(axum::middleware::from_fn_with_state(
            app_origin,
            same_site_posts_only,
        ))
        .layer(axum::middleware::map_response(page_headers))
}

/// Where the server says it is reached (`scheme://host[:port]` of its public URL).
#[derive(Clone)]
struct PublicOrigin(String);

fn public_origin(public_url: &str) -> String {
    let (scheme, rest) = public_url.split_once("://").unwrap_or(("http", public_url));
    let authority = rest.split('/').next().unwrap_or("");
    format!("{scheme}://{authority}").to_ascii_lowercase()
}

/// Headers every portal response carries: nothing but this server's style sheet and forms,
/// never in a frame.
async fn page_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    // A page may widen where its forms go (the consent page's answer goes on to the app).
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`, with which a browser sends `Origin: null` on the portal's own forms;
    // other sites still get nothing.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// Refuses a form posted from another site before any handler runs: the browser says so
/// (`Sec-Fetch-Site: cross-site`), or its `Origin` is not this server. The anti-forgery token
/// is the defence that does not depend on the browser; this one also covers the sign-in form,
/// which has no session yet.
async fn same_site_posts_only(
    axum::extract::State(origin): axum::extract::State<PublicOrigin>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() == Method::POST && !same_site(req.headers(), &origin.0) {
        return PageError::new(
            StatusCode::FORBIDDEN,
            "This form came from another site",
            "For your safety, Mica accepts its forms only from its own pages. Open Mica's page \
             yourself and try again.",
        )
        .into_response();
    }
    next.run(req).await
}

fn same_site(h: &HeaderMap, public_origin: &str) -> bool {
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    // Set by the browser itself, never by a page: when present it is the answer.
    if let Some(site) = header("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    // Else the `Origin`: the server's public URL, or the host the request was sent to (the
    // same, unless a proxy in front rewrites `Host`).
    match header("origin") {
        None => true,
        Some(origin) if origin.eq_ignore_ascii_case(public_origin) => true,
        Some(origin) => match (origin.split_once("://"), header("host")) {
            (Some((_, authority)), Some(host)) => authority.eq_ignore_ascii_case(host),
            _ => false,
        },
    }
}

async fn style_sheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../templates/web/mica.css"),
    )
        .into_response()
}

/// What every page shows around its content.
pub(crate) struct Layout {
    pub title: String,
    /// The signed-in session's anti-forgery token; empty on the sign-in pages.
    pub csrf: String,
    pub signed_in: bool,
    /// A line saying what just happened.
    pub notice: Option<String>,
    /// A line saying what went wrong.
    pub error: Option<String>,
}

impl Layout {
    pub(crate) fn signed_out(title: &str) -> Layout {
        Layout {
            title: title.into(),
            csrf: String::new(),
            signed_in: false,
            notice: None,
            error: None,
        }
    }

    pub(crate) fn for_session(app: &AppState, p: &Principal, title: &str) -> Layout {
        Layout {
            title: title.into(),
            csrf: app.identity.csrf_token(p),
            signed_in: true,
            notice: None,
            error: None,
        }
    }
}

/// Renders a page.
pub(crate) fn page(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page");
            ApiError::internal().into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "web/error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    heading: &'a str,
    message: &'a str,
}

/// A page that says what went wrong, with the status the API would give.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    heading: String,
    message: String,
}

impl PageError {
    pub(crate) fn new(status: StatusCode, heading: &str, message: &str) -> PageError {
        PageError {
            status,
            heading: heading.into(),
            message: message.into(),
        }
    }

    pub(crate) fn not_found() -> PageError {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is nothing here, or it is not yours.",
        )
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        let heading = match e.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::CONFLICT => "Not possible right now",
            s if s.is_server_error() => "Something went wrong on our side",
            _ => "That did not work",
        };
        PageError {
            status: e.status,
            heading: heading.into(),
            message: sentence(&e.message),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/web/sign-in").into_response();
        }
        page(
            self.status,
            &ErrorPage {
                layout: Layout::signed_out(&self.heading),
                heading: &self.heading,
                message: &self.message,
            },
        )
    }
}

/// An API message as a sentence on a page: capitalised, ending with a full stop.
pub(crate) fn sentence(message: &str) -> String {
    let mut out: String = message
        .chars()
        .take(1)
        .flat_map(char::to_uppercase)
        .collect();
    out.push_str(
        message
            .get(message.chars().next().map_or(0, char::len_utf8)..)
            .unwrap_or(""),
    );
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// A signed-in browser: its session cookie checked against its session.
pub(crate) struct WebSession(pub Principal);

/// Where a browser without a session goes: the sign-in page, which returns it here. A cookie
/// that no longer opens anything is cleared.
fn sign_in_first(app: &AppState, here: &str) -> Response {
    let mut r =
        Redirect::to(&format!("/web/sign-in?next={}", percent_encode(here))).into_response();
    if let Some(v) = cleared_cookie(app) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

impl FromRequestParts<AppState> for WebSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let here = if parts.method == Method::GET {
            parts
                .uri
                .path_and_query()
                .map_or("/web/", |pq| pq.as_str())
                .to_owned()
        } else {
            "/web/".to_owned()
        };
        match web_session(app, &parts.headers).await {
            Ok(Some(p)) => Ok(WebSession(p)),
            Ok(None) => Err(sign_in_first(app, &here)),
            Err(e) => Err(PageError::from(e).into_response()),
        }
    }
}

/// The session of the first `mica_session` cookie that opens one (a browser may send several
/// of that name, set for other paths or by a sibling domain); `None` when none does.
pub(crate) async fn web_session(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    for value in cookies(headers, cookie_spec(&app.public_url).name) {
        match app.identity.authenticate_web(value).await {
            Ok(p) => return Ok(Some(p)),
            Err(e) => {
                let e = ApiError::from(e);
                if e.status != StatusCode::UNAUTHORIZED {
                    return Err(e);
                }
            }
        }
    }
    Ok(None)
}

/// The values of every cookie named `name` the request has (at most a few are looked at).
fn cookies<'a>(h: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .take(4)
}

/// The `Set-Cookie` that signs a browser in. No `Max-Age`: closing the browser forgets it,
/// and its value stops working when the session ends (within a working day) anyway.
pub(crate) fn session_cookie(app: &AppState, value: &str) -> Option<HeaderValue> {
    let c = cookie_spec(&app.public_url);
    HeaderValue::from_str(&format!(
        "{}={value}; Path={}; HttpOnly; SameSite=Lax{}",
        c.name, c.path, c.secure
    ))
    .ok()
}

/// The `Set-Cookie` that signs a browser out.
pub(crate) fn cleared_cookie(app: &AppState) -> Option<HeaderValue> {
    let c = cookie_spec(&app.public_url);
    HeaderValue::from_str(&format!(
        "{}=; Path={}; HttpOnly; SameSite=Lax; Max-Age=0{}",
        c.name, c.path, c.secure
    ))
    .ok()
}

/// A form, with a page that says what was wrong with it instead of the plain-text rejection.
pub(crate) struct WebForm<T>(pub T);

impl<S, T> FromRequest<S> for WebForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, PageError> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(WebForm(v)),
            Err(e) => Err(PageError::new(
                e.status(),
                "That form could not be read",
                "Something in the form was missing or not understood. Go back, reload the page \
                 and try again.",
            )),
        }
    }
}

/// Ids in the address; one that cannot be read (such as an escape that is not UTF-8) names
/// nothing, so the page says not found.
pub(crate) struct WebPath<T>(pub T);

impl<S, T> FromRequestParts<S> for WebPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(WebPath(v)),
            Err(_) => Err(PageError::not_found()),
        }
    }
}

/// A query string, with a page that says what was wrong with it instead of the plain-text
/// rejection.
pub(crate) struct WebQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for WebQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(WebQuery(v)),
            Err(e) => Err(PageError::new(
                e.status(),
                "That address could not be read",
                "Something after the `?` in the address was not understood.",
            )),
        }
    }
}

/// A destructive form's "I understand" box (`confirm=yes`); refused with what ticking it
/// confirms.
pub(crate) fn ticked(confirm: Option<&str>, confirms: &str) -> Result<(), ApiError> {
    if confirm == Some("yes") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
        format!("tick the box to confirm that {confirms}"),
    ))
}

/// Checks a form's anti-forgery token.
pub(crate) fn check_csrf(app: &AppState, p: &Principal, token: &str) -> Result<(), PageError> {
    if app.identity.csrf_ok(p, token) {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form did not come from this signed-in page. Go back, reload the page and try \
             again.",
        ))
    }
}

/// Where a sign-in or confirmation may return to: a portal page, nothing else (an address
/// given in a link must not send the browser to another site).
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/web/")
                && !n.contains("//")
                && !n.split(['/', '?']).any(|seg| seg == "." || seg == "..")
                // Nor an escaped one (`%2e%2e`): the portal's own paths need no escapes.
                && !n.split('?').next().unwrap_or("").contains('%')
                && n.len() <= MAX_NEXT
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_owned()
        }
        _ => "/web/".to_owned(),
    }
}

/// Percent-encodes a path for a query string.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A time (RFC 3339) as a person reads it: `2026-12-03 14:05 UTC`.
pub(crate) fn human_time(rfc3339: &str) -> String {
    match time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        }
        Err(_) => rfc3339.to_owned(),
    }
}

/// A size as a person reads it: `1.5 GB`.
pub(crate) fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KB", "MB", "GB", "TB"];
    let mut v = n.max(0) as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} bytes", n.max(0))
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_addresses_stay_on_the_portal() {
        assert_eq!(safe_next(Some("/web/devices/d1")), "/web/devices/d1");
        assert_eq!(safe_next(Some("https://evil.example/")), "/web/");
        assert_eq!(safe_next(Some("//evil.example/web/")), "/web/");
        assert_eq!(safe_next(Some("/web/\\evil")), "/web/");
        assert_eq!(safe_next(Some("/web/..//evil.example")), "/web/");
        assert_eq!(safe_next(Some("/web/../api/v1/me")), "/web/");
        assert_eq!(safe_next(Some("/web/%2e%2e/api/v1/me")), "/web/");
        assert_eq!(
            safe_next(Some("/web/bin?cursor=a%2Fb")),
            "/web/bin?cursor=a%2Fb"
        );
        assert_eq!(
            safe_next(Some("/web/confirm?next=/web/devices/d1")),
            "/web/confirm?next=/web/devices/d1"
        );
        assert_eq!(safe_next(Some("/api/v1/me")), "/web/");
        assert_eq!(safe_next(None), "/web/");
    }

    #[test]
    fn only_this_sites_posts_pass() {
        let public = "https://mica.example";
        let same_site = |h: &HeaderMap| same_site(h, public);
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("mica.example:8080"));
        assert!(same_site(&h));
        h.insert(
            "origin",
            HeaderValue::from_static("https://mica.example:8080"),
        );
        assert!(same_site(&h));
        h.insert("origin", HeaderValue::from_static("https://evil.example"));
        assert!(!same_site(&h));
        // Behind a proxy that rewrites `Host`: the public URL's origin.
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        h.insert("origin", HeaderValue::from_static("https://mica.example"));
        assert!(same_site(&h));
        h.insert("origin", HeaderValue::from_static("null"));
        assert!(!same_site(&h));
        h.remove("origin");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_site(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(!same_site(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        h.insert("origin", HeaderValue::from_static("null"));
        assert!(same_site(&h));
    }

    #[test]
    fn behind_https_the_cookie_is_the_hosts_alone() {
        let c = cookie_spec("https://mica.example");
        assert_eq!(
            (c.name, c.path, c.secure),
            ("__Host-mica_session", "/", "; Secure")
        );
        let c = cookie_spec("http://localhost:8080");
        assert_eq!((c.name, c.path, c.secure), ("mica_session", "/web", ""));
    }

    #[test]
    fn people_read_sizes_and_times() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(5_000_000_000), "5.0 GB");
        assert_eq!(human_time("2026-12-03T14:05:09Z"), "2026-12-03 14:05 UTC");
        assert_eq!(sentence("the code is wrong"), "The code is wrong.");
    }
}
