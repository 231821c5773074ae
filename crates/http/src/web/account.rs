//! Signing in and out, confirming it's you (step-up), the overview and the sessions page.

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use mica_identity::{
    CodeChannel, DeviceInfo, Principal, SecondFactor, SignInOutcome, SignedIn, StepUpProof,
};
use secrecy::SecretString;
use serde::Deserialize;

use super::{
    check_csrf, cleared_cookie, human_bytes, human_time, page, safe_next, session_cookie, Layout,
    PageError, WebForm, WebPath, WebQuery, WebSession,
};
use crate::error::ApiError;
use crate::extract::Client;
use crate::AppState;

/// How a browser's session names itself in the sessions list.
fn browser(client: Client) -> mica_identity::ClientInfo {
    client.info(Some(DeviceInfo {
        model: None,
        os_version: None,
        client: Some("Web browser".into()),
    }))
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
    /// Asked to sign in again (an app wants a fresh sign-in), even if signed in.
    again: Option<String>,
}

#[derive(Template)]
#[template(path = "web/sign_in.html")]
struct SignInPage {
    layout: Layout,
    next: String,
    login: String,
}

pub(crate) async fn sign_in_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    WebQuery(q): WebQuery<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    // Already signed in: straight on.
    if q.again.is_none() {
        if let Ok(Some(_)) = super::web_session(&app, &headers).await {
            return Redirect::to(&next).into_response();
        }
    }
    page(
        StatusCode::OK,
        &SignInPage {
            layout: Layout::signed_out("Sign in"),
            next,
            login: String::new(),
        },
    )
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    login: String,
    password: SecretString,
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "web/two_step.html")]
struct TwoStepPage {
    layout: Layout,
    next: String,
    challenge_id: String,
    can_email: bool,
    can_sms: bool,
    /// Which kind of code the form expects first.
    kind: &'static str,
}

pub(crate) async fn sign_in(
    State(app): State<AppState>,
    headers: HeaderMap,
    client: Client,
    WebForm(form): WebForm<SignInForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let outcome = app
        .identity
        .sign_in(form.login.trim(), form.password, &browser(client))
        .await;
    match outcome {
        Ok(SignInOutcome::SignedIn(s)) => signed_in(&app, &headers, &s, &next).await,
        Ok(SignInOutcome::TwoStep {
            challenge_id,
            methods,
            ..
        }) => page(
            StatusCode::OK,
            &TwoStepPage {
                layout: Layout::signed_out("Two-step verification"),
                next,
                challenge_id,
                can_email: methods.contains(&"email"),
                can_sms: methods.contains(&"sms"),
                kind: "totp",
            },
        ),
        Err(e) => {
            let e = ApiError::from(e);
            let mut layout = Layout::signed_out("Sign in");
            layout.error = Some(super::sentence(&e.message));
            page(
                e.status,
                &SignInPage {
                    layout,
                    next,
                    login: form.login.chars().take(254).collect(),
                },
            )
        }
    }
}

/// Makes the new session the browser's, sets its cookie and goes on. A session the browser
/// was still signed in with (a second sign-in from a stale tab) is ended: it would otherwise
/// stay open, unseen, until it expired.
async fn signed_in(app: &AppState, headers: &HeaderMap, s: &SignedIn, next: &str) -> Response {
    if let Ok(Some(old)) = super::web_session(app, headers).await {
        if old.session != s.session {
            let client = mica_identity::ClientInfo::default();
            if let Err(e) = app
                .identity
                .end_session(old.account, &old.session, "signed_out", &client, None)
                .await
            {
                tracing::warn!(error = %e, "ending the browser's previous session");
            }
        }
    }
    let cookie = match app.identity.open_web_session(s).await {
        Ok((cookie, _)) => cookie,
        Err(e) => return PageError::from(ApiError::from(e)).into_response(),
    };
    let mut r = Redirect::to(next).into_response();
    match session_cookie(app, &cookie) {
        Some(v) => {
            r.headers_mut().insert(header::SET_COOKIE, v);
            r
        }
        None => ApiError::internal().into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct TwoStepForm {
    challenge_id: String,
    /// `totp`, `recovery_code` or `code`.
    kind: String,
    code: String,
    next: Option<String>,
    #[serde(default)]
    can_email: bool,
    #[serde(default)]
    can_sms: bool,
}

pub(crate) async fn two_step(
    State(app): State<AppState>,
    headers: HeaderMap,
    client: Client,
    WebForm(form): WebForm<TwoStepForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let code = form.code.trim().to_owned();
    let (factor, kind) = match form.kind.as_str() {
        "recovery_code" => (SecondFactor::RecoveryCode(code), "recovery_code"),
        "code" => (SecondFactor::Code(code), "code"),
        _ => (SecondFactor::Totp(code), "totp"),
    };
    match app
        .identity
        .complete_two_step(&form.challenge_id, factor, &browser(client))
        .await
    {
        Ok(s) => signed_in(&app, &headers, &s, &next).await,
        Err(e) => {
            let e = ApiError::from(e);
            let mut layout = Layout::signed_out("Two-step verification");
            layout.error = Some(super::sentence(&e.message));
            page(
                e.status,
                &TwoStepPage {
                    layout,
                    next,
                    challenge_id: form.challenge_id,
                    can_email: form.can_email,
                    can_sms: form.can_sms,
                    kind,
                },
            )
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct TwoStepSendForm {
    challenge_id: String,
    channel: String,
    next: Option<String>,
    #[serde(default)]
    can_email: bool,
    #[serde(default)]
    can_sms: bool,
}

pub(crate) async fn two_step_send(
    State(app): State<AppState>,
    client: Client,
    WebForm(form): WebForm<TwoStepSendForm>,
) -> Response {
    let channel = if form.channel == "sms" {
        CodeChannel::Sms
    } else {
        CodeChannel::Email
    };
    let sent = app
        .identity
        .send_two_step_code(&form.challenge_id, channel, &client.info(None))
        .await;
    let mut layout = Layout::signed_out("Two-step verification");
    let status = match sent {
        Ok(s) => {
            layout.notice = Some(format!("We sent a code to {}.", s.sent_to));
            StatusCode::OK
        }
        Err(e) => {
            let e = ApiError::from(e);
            layout.error = Some(super::sentence(&e.message));
            e.status
        }
    };
    page(
        status,
        &TwoStepPage {
            layout,
            next: safe_next(form.next.as_deref()),
            challenge_id: form.challenge_id,
            can_email: form.can_email,
            can_sms: form.can_sms,
            kind: "code",
        },
    )
}

/// A form that carries nothing but its anti-forgery token.
#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

impl CsrfForm {
    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(crate) async fn sign_out(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebForm(form): WebForm<CsrfForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let id = p.session.clone();
    app.identity
        .revoke_session(&p, &id, &client.info(None))
        .await
        .map_err(ApiError::from)?;
    let mut r = Redirect::to("/web/sign-in").into_response();
    if let Some(v) = cleared_cookie(&app) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

#[derive(Template)]
#[template(path = "web/overview.html")]
struct OverviewPage {
    layout: Layout,
    account: String,
    nickname: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    used: String,
    quota: String,
    /// Per mille of the quota used, for the meter.
    used_permille: i64,
    devices: usize,
    score: u32,
    advice: Vec<&'static str>,
}

pub(crate) async fn overview(
    State(app): State<AppState>,
    WebSession(p): WebSession,
) -> Result<Response, PageError> {
    let me = app.identity.me(&p).await.map_err(ApiError::from)?;
    let profile = app.identity.profile(&p).await.map_err(ApiError::from)?;
    let usage = app.cloud.usage(p.account).await.map_err(ApiError::from)?;
    let devices = app.devices.list(&p).await.map_err(ApiError::from)?;
    let (score, steps) = app
        .identity
        .security_checkup(&p)
        .await
        .map_err(ApiError::from)?;
    let used_permille = if usage.quota_bytes > 0 {
        (i128::from(usage.used_bytes) * 1000 / i128::from(usage.quota_bytes)).clamp(0, 1000) as i64
    } else {
        1000
    };
    Ok(page(
        StatusCode::OK,
        &OverviewPage {
            layout: Layout::for_session(&app, &p, "Your account"),
            account: me.id.to_string(),
            nickname: profile.nickname,
            email: me.email.as_ref().map(ToString::to_string),
            phone: me.phone.as_ref().map(ToString::to_string),
            used: human_bytes(usage.used_bytes),
            quota: human_bytes(usage.quota_bytes),
            used_permille,
            devices: devices.iter().filter(|d| d.state == "linked").count(),
            score,
            advice: steps.iter().filter(|s| !s.done).map(|s| s.advice).collect(),
        },
    ))
}

#[derive(Template)]
#[template(path = "web/confirm.html")]
struct ConfirmPage {
    layout: Layout,
    next: String,
    /// The account's email and phone, where a code can be sent.
    email: Option<String>,
    phone: Option<String>,
    totp: bool,
    /// Set once a code was sent: the form to enter it.
    challenge_id: Option<String>,
}

async fn confirm_page_for(
    app: &AppState,
    p: &Principal,
    next: String,
    challenge_id: Option<String>,
) -> Result<ConfirmPage, PageError> {
    let me = app.identity.me(p).await.map_err(ApiError::from)?;
    let totp = app
        .identity
        .two_step_status(p)
        .await
        .map_err(ApiError::from)?
        .totp;
    Ok(ConfirmPage {
        layout: Layout::for_session(app, p, "Confirm it's you"),
        next,
        email: me.email.as_ref().map(ToString::to_string),
        phone: me.phone.as_ref().map(ToString::to_string),
        totp,
        challenge_id,
    })
}

/// Step-up: before an erase (or any other change that needs it), the browser's session proves
/// a fresh factor, as an app's would.
pub(crate) async fn confirm_page(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<NextQuery>,
) -> Result<Response, PageError> {
    let page_ = confirm_page_for(&app, &p, safe_next(q.next.as_deref()), None).await?;
    Ok(page(StatusCode::OK, &page_))
}

#[derive(Deserialize)]
pub(crate) struct ConfirmSendForm {
    #[serde(default)]
    csrf: String,
    channel: String,
    next: Option<String>,
}

pub(crate) async fn confirm_send(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebForm(form): WebForm<ConfirmSendForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let channel = if form.channel == "sms" {
        CodeChannel::Sms
    } else {
        CodeChannel::Email
    };
    let next = safe_next(form.next.as_deref());
    let sent = app
        .identity
        .start_step_up(&p, channel, &client.info(None))
        .await;
    match sent {
        Ok(s) => {
            let mut page_ = confirm_page_for(&app, &p, next, Some(s.challenge_id)).await?;
            page_.layout.notice = Some(format!("We sent a code to {}.", s.sent_to));
            Ok(page(StatusCode::OK, &page_))
        }
        Err(e) => {
            let e = ApiError::from(e);
            let mut page_ = confirm_page_for(&app, &p, next, None).await?;
            page_.layout.error = Some(super::sentence(&e.message));
            Ok(page(e.status, &page_))
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    /// With `code`: the code that was sent for this challenge…
    challenge_id: Option<String>,
    code: Option<String>,
    /// …or a code from the authenticator app.
    totp: Option<String>,
    next: Option<String>,
}

pub(crate) async fn confirm_verify(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebForm(form): WebForm<ConfirmForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let next = safe_next(form.next.as_deref());
    fn filled(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    let proof = match (
        filled(&form.challenge_id),
        filled(&form.code),
        filled(&form.totp),
    ) {
        (Some(c), Some(code), _) => StepUpProof::Code {
            challenge_id: c.to_owned(),
            code: code.to_owned(),
        },
        (_, _, Some(t)) => StepUpProof::Totp(t.to_owned()),
        _ => {
            let mut page_ = confirm_page_for(&app, &p, next, form.challenge_id.clone()).await?;
            page_.layout.error = Some("Enter the code first.".into());
            return Ok(page(StatusCode::UNPROCESSABLE_ENTITY, &page_));
        }
    };
    match app
        .identity
        .verify_step_up(&p, proof, &client.info(None))
        .await
    {
        Ok(_) => {
            let sep = if next.contains('?') { '&' } else { '?' };
            Ok(Redirect::to(&format!("{next}{sep}confirmed=1")).into_response())
        }
        Err(e) => {
            let e = ApiError::from(e);
            let mut page_ = confirm_page_for(&app, &p, next, form.challenge_id.clone()).await?;
            page_.layout.error = Some(super::sentence(&e.message));
            Ok(page(e.status, &page_))
        }
    }
}

pub(crate) struct SessionRow {
    id: String,
    current: bool,
    what: String,
    ip: String,
    created: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "web/sessions.html")]
struct SessionsPage {
    layout: Layout,
    sessions: Vec<SessionRow>,
}

pub(crate) async fn sessions(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<SignedOutQuery>,
) -> Result<Response, PageError> {
    let list = app.identity.sessions(&p).await.map_err(ApiError::from)?;
    let mut layout = Layout::for_session(&app, &p, "Where you're signed in");
    if q.revoked.is_some() {
        layout.notice = Some("That session is signed out.".into());
    }
    let sessions = list
        .into_iter()
        .map(|s| {
            let what = match (&s.client, &s.device_model) {
                (Some(c), Some(m)) => format!("{m} · {c}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) if !s.user_agent.is_empty() => s.user_agent.chars().take(80).collect(),
                (None, None) => "Unknown client".into(),
            };
            SessionRow {
                id: s.id.0.clone(),
                current: s.current,
                what,
                ip: s.ip,
                created: human_time(&s.created_at.to_rfc3339()),
                last_used: human_time(&s.last_used_at.to_rfc3339()),
            }
        })
        .collect();
    Ok(page(StatusCode::OK, &SessionsPage { layout, sessions }))
}

#[derive(Deserialize)]
pub(crate) struct SignedOutQuery {
    revoked: Option<String>,
}

pub(crate) async fn revoke_session(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<CsrfForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    if id.len() > 64 {
        return Err(PageError::not_found());
    }
    let id = mica_core::SessionId(id);
    app.identity
        .revoke_session(&p, &id, &client.info(None))
        .await
        .map_err(ApiError::from)?;
    if id == p.session {
        let mut r = Redirect::to("/web/sign-in").into_response();
        if let Some(v) = cleared_cookie(&app) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return Ok(r);
    }
    Ok(Redirect::to("/web/sessions?revoked=1").into_response())
}
