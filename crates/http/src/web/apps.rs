//! Signing in to other apps with Mica (ID-16), in the browser: the authorization endpoint with
//! its consent page, the page where a TV's or a command line's code is typed, and the "Apps"
//! page, where a person sees every app they let in and takes its access away.

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use mica_identity::oidc::{scope_description, AuthorizationRequest, AuthorizeRefusal};
use mica_identity::Principal;
use serde::Deserialize;

use super::{
    check_csrf, human_time, page, percent_encode, Layout, PageError, WebForm, WebPath, WebQuery,
    WebSession,
};
use crate::error::ApiError;
use crate::extract::Client;
use crate::AppState;

/// One thing an app is allowed to know, in words.
pub(crate) struct Allowed {
    scope: String,
    what: &'static str,
}

fn allowed(scopes: &[String]) -> Vec<Allowed> {
    scopes
        .iter()
        .map(|s| Allowed {
            scope: s.clone(),
            what: scope_description(s),
        })
        .collect()
}

/// The request's parameters, as hidden fields of the consent form.
pub(crate) struct Hidden {
    name: &'static str,
    value: String,
}

fn hidden(q: &AuthorizationRequest) -> Vec<Hidden> {
    let fields: [(&'static str, &Option<String>); 10] = [
        ("response_type", &q.response_type),
        ("client_id", &q.client_id),
        ("redirect_uri", &q.redirect_uri),
        ("scope", &q.scope),
        ("state", &q.state),
        ("nonce", &q.nonce),
        ("code_challenge", &q.code_challenge),
        ("code_challenge_method", &q.code_challenge_method),
        ("prompt", &q.prompt),
        ("max_age", &q.max_age),
    ];
    fields
        .into_iter()
        .filter_map(|(name, v)| {
            v.as_ref().map(|value| Hidden {
                name,
                value: value.clone(),
            })
        })
        .collect()
}

/// This page's own address for these parameters (where a sign-in returns to).
fn authorize_address(q: &AuthorizationRequest) -> String {
    let mut url = "/web/authorize".to_owned();
    let mut sep = '?';
    for h in hidden(q) {
        url.push(sep);
        url.push_str(h.name);
        url.push('=');
        // Every `/` too: a value holding `//` (a redirect address) would not pass as a
        // portal address to return to.
        for b in h.value.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                url.push(char::from(b));
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
        sep = '&';
    }
    url
}

#[derive(Template)]
#[template(path = "web/authorize.html")]
struct ConsentPage {
    layout: Layout,
    client_name: String,
    account: String,
    allowed: Vec<Allowed>,
    /// Already allowed before: the page only asks to go on.
    known: bool,
    fields: Vec<Hidden>,
}

fn refused(message: &str) -> PageError {
    PageError::new(
        StatusCode::BAD_REQUEST,
        "This sign-in link does not work",
        message,
    )
}

/// `GET /web/authorize`: the authorization endpoint. A browser arriving from the app with a
/// signed-in session, whose person allowed the app before, goes straight back with a code;
/// otherwise it signs in and is asked.
pub(crate) async fn authorize(
    State(app): State<AppState>,
    client: Client,
    headers: HeaderMap,
    WebQuery(q): WebQuery<AuthorizationRequest>,
) -> Result<Response, PageError> {
    let az = match app.identity.check_authorization(&q).await {
        Ok(az) => az,
        Err(AuthorizeRefusal::Page(m)) => return Err(refused(&m)),
        Err(AuthorizeRefusal::Redirect(url)) => return Ok(Redirect::to(&url).into_response()),
    };
    let session = super::web_session(&app, &headers).await?;
    let Some(p) = session else {
        if az.prompts("none") {
            let url = az.error("login_required", "the person is not signed in");
            return Ok(Redirect::to(&url).into_response());
        }
        return Ok(Redirect::to(&format!(
            "/web/sign-in?next={}",
            percent_encode(&authorize_address(&q))
        ))
        .into_response());
    };
    let signed_in_at = app
        .identity
        .signed_in_at(&p)
        .await
        .map_err(ApiError::from)?;
    if az.wants_fresh_sign_in(signed_in_at, app.clock.now()) {
        if az.prompts("none") {
            let url = az.error("login_required", "the person must sign in again");
            return Ok(Redirect::to(&url).into_response());
        }
        // Back here without `prompt=login` or `max_age` once signed in again, so it is asked
        // only once (`max_age=0` would ask for ever); any other prompt stays.
        let mut again = q.clone();
        again.max_age = None;
        again.prompt = q.prompt.as_deref().and_then(|p| {
            let rest: Vec<&str> = p
                .split(' ')
                .filter(|w| !w.is_empty() && *w != "login")
                .collect();
            (!rest.is_empty()).then(|| rest.join(" "))
        });
        return Ok(Redirect::to(&format!(
            "/web/sign-in?again=1&next={}",
            percent_encode(&authorize_address(&again))
        ))
        .into_response());
    }
    let consent = app
        .identity
        .consent_needed(&p, &az)
        .await
        .map_err(ApiError::from)?;
    if az.prompts("none") {
        let url = if consent {
            az.error("consent_required", "the person has not allowed this app")
        } else {
            approve(&app, &p, &az, client).await?
        };
        return Ok(Redirect::to(&url).into_response());
    }
    // Straight back only when the browser came from elsewhere (the app's link): after a
    // sign-in on these pages the answer would end a chain of form posts, which the pages'
    // `form-action` forbids sending to another site, so the person presses "Continue".
    let from_elsewhere = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| s != "same-origin");
    if !consent && !az.prompts("consent") && from_elsewhere {
        let url = approve(&app, &p, &az, client).await?;
        return Ok(Redirect::to(&url).into_response());
    }
    let me = app.identity.me(&p).await.map_err(ApiError::from)?;
    let consent_page = ConsentPage {
        layout: Layout::for_session(&app, &p, &format!("Sign in to {}", az.client_name)),
        client_name: az.client_name.clone(),
        account: me.id.to_string(),
        allowed: allowed(&az.scopes),
        known: !consent,
        fields: hidden(&q),
    };
    let mut r = page(StatusCode::OK, &consent_page);
    // The form's answer is a redirect to the app: its origin must be allowed as a target.
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self' {}; \
         frame-ancestors 'none'; base-uri 'none'",
        az.redirect_origin()
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    Ok(r)
}

async fn approve(
    app: &AppState,
    p: &Principal,
    az: &mica_identity::oidc::Authorization,
    client: Client,
) -> Result<String, PageError> {
    Ok(app
        .identity
        .approve_authorization(p, az, &client.info(None))
        .await
        .map_err(ApiError::from)?)
}

#[derive(Deserialize)]
pub(crate) struct ConsentForm {
    #[serde(default)]
    csrf: String,
    decision: Option<String>,
    #[serde(flatten)]
    request: AuthorizationRequest,
}

/// `POST /web/authorize`: the person's answer.
pub(crate) async fn decide(
    State(app): State<AppState>,
    client: Client,
    WebSession(p): WebSession,
    WebForm(form): WebForm<ConsentForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let az = match app.identity.check_authorization(&form.request).await {
        Ok(az) => az,
        Err(AuthorizeRefusal::Page(m)) => return Err(refused(&m)),
        Err(AuthorizeRefusal::Redirect(url)) => return Ok(Redirect::to(&url).into_response()),
    };
    let url = if form.decision.as_deref() == Some("allow") {
        approve(&app, &p, &az, client).await?
    } else {
        az.error("access_denied", "the person declined")
    };
    Ok(Redirect::to(&url).into_response())
}

#[derive(Template)]
#[template(path = "web/device_code.html")]
struct DeviceCodePage {
    layout: Layout,
    /// The code typed, when it matched a waiting device.
    pending: Option<Pending>,
    typed: String,
}

pub(crate) struct Pending {
    user_code: String,
    client_name: String,
    allowed: Vec<Allowed>,
}

#[derive(Deserialize)]
pub(crate) struct DeviceQuery {
    user_code: Option<String>,
    done: Option<String>,
}

/// `GET /web/device`: where the code a TV or a command line shows is typed.
pub(crate) async fn device_page(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<DeviceQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Sign in on a device");
    layout.notice = match q.done.as_deref() {
        Some("allowed") => Some("Done: the device is signing in. You can go back to it.".into()),
        Some("declined") => Some("The device was not let in.".into()),
        _ => None,
    };
    let typed = q.user_code.unwrap_or_default();
    let mut pending = None;
    if !typed.is_empty() {
        match app
            .identity
            .pending_device(&p, &typed)
            .await
            .map_err(ApiError::from)?
        {
            Some(d) => {
                pending = Some(Pending {
                    user_code: d.user_code,
                    client_name: d.client_name,
                    allowed: allowed(&d.scopes),
                })
            }
            None => {
                layout.error = Some(
                    "That code is not one a device is waiting with, or it has expired. Check \
                     the code on the device's screen."
                        .into(),
                )
            }
        }
    }
    let status = if !typed.is_empty() && pending.is_none() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    Ok(page(
        status,
        &DeviceCodePage {
            layout,
            pending,
            typed: typed.chars().take(16).collect(),
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct DeviceForm {
    #[serde(default)]
    csrf: String,
    user_code: String,
    decision: Option<String>,
}

/// `POST /web/device`: the person lets the device in, or not.
pub(crate) async fn device_decide(
    State(app): State<AppState>,
    client: Client,
    WebSession(p): WebSession,
    WebForm(form): WebForm<DeviceForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let approve = form.decision.as_deref() == Some("allow");
    let decided = app
        .identity
        .decide_device(&p, &form.user_code, approve, &client.info(None))
        .await
        .map_err(ApiError::from)?;
    if !decided {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            "That code has expired",
            "The device stopped waiting, or it was already answered. Start again on the device.",
        ));
    }
    Ok(Redirect::to(if approve {
        "/web/device?done=allowed"
    } else {
        "/web/device?done=declined"
    })
    .into_response())
}

pub(crate) struct AppRow {
    id: String,
    name: String,
    allowed: Vec<Allowed>,
    granted: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "web/apps.html")]
struct AppsPage {
    layout: Layout,
    apps: Vec<AppRow>,
}

#[derive(Deserialize)]
pub(crate) struct AppsQuery {
    done: Option<String>,
}

/// `GET /web/apps`: every app the person signed in to with Mica, and what it may know.
pub(crate) async fn apps(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<AppsQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Apps");
    if q.done.as_deref() == Some("revoked") {
        layout.notice =
            Some("The app's access is taken away, and it is signed out everywhere.".into());
    }
    let grants = app.identity.app_grants(&p).await.map_err(ApiError::from)?;
    let apps = grants
        .into_iter()
        .map(|g| AppRow {
            id: g.client_id,
            name: g.client_name,
            allowed: allowed(&g.scope.split(' ').map(str::to_owned).collect::<Vec<_>>()),
            granted: human_time(&g.granted_at.to_rfc3339()),
            last_used: human_time(&g.last_used_at.to_rfc3339()),
        })
        .collect();
    Ok(page(StatusCode::OK, &AppsPage { layout, apps }))
}

#[derive(Deserialize)]
pub(crate) struct RevokeForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /web/apps/{client}/revoke`.
pub(crate) async fn revoke(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<RevokeForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let info = client.info(None);
    if !app
        .identity
        .revoke_app(&p, &id, &info)
        .await
        .map_err(ApiError::from)?
    {
        return Err(PageError::not_found());
    }
    Ok(Redirect::to("/web/apps?done=revoked").into_response())
}
