//! Security in the browser: the password (after confirming it's you), two-step verification's
//! state, and every sign-in to the account, refused ones included.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mica_identity::{LoginRecord, Principal};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{check_csrf, human_time, page, Layout, PageError, WebForm, WebQuery, WebSession};
use crate::error::ApiError;
use crate::extract::Client;
use crate::AppState;

/// Sign-ins the page lists.
const SHOWN: i64 = 20;

/// A sign-in, as the page lists it.
pub(crate) struct SignInRow {
    at: String,
    outcome: &'static str,
    /// Not a sign-in that opened a session.
    refused: bool,
    ip: String,
    client: String,
}

fn outcome(o: &str) -> &'static str {
    match o {
        "success" => "Signed in",
        "wrong_password" => "Wrong password",
        "wrong_second_factor" => "Wrong two-step code",
        "account_suspended" => "Refused: account suspended",
        "account_inactive" => "Refused: account not active",
        _ => "Refused",
    }
}

impl From<&LoginRecord> for SignInRow {
    fn from(r: &LoginRecord) -> Self {
        let client = match (&r.device_model, &r.client) {
            (Some(m), Some(c)) => format!("{m} · {c}"),
            (Some(m), None) => m.clone(),
            (None, Some(c)) => c.clone(),
            (None, None) => r.user_agent.chars().take(80).collect(),
        };
        SignInRow {
            at: human_time(&r.at.to_rfc3339()),
            outcome: outcome(&r.outcome),
            refused: r.outcome != "success",
            ip: r.ip.clone(),
            client,
        }
    }
}

#[derive(Template)]
#[template(path = "web/security.html")]
struct SecurityPage {
    layout: Layout,
    totp: bool,
    recovery_codes_left: i64,
    sign_ins: Vec<SignInRow>,
}

async fn security_page(
    app: &AppState,
    p: &Principal,
    layout: Layout,
) -> Result<SecurityPage, PageError> {
    let two_step = app
        .identity
        .two_step_status(p)
        .await
        .map_err(ApiError::from)?;
    let history = app
        .identity
        .login_history(p, SHOWN)
        .await
        .map_err(ApiError::from)?;
    Ok(SecurityPage {
        layout,
        totp: two_step.totp,
        recovery_codes_left: two_step.recovery_codes_left,
        sign_ins: history.iter().map(SignInRow::from).collect(),
    })
}

#[derive(Deserialize)]
pub(crate) struct SecurityQuery {
    changed: Option<String>,
    confirmed: Option<String>,
}

pub(crate) async fn show(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<SecurityQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Security");
    layout.notice = match (q.changed.as_deref(), q.confirmed) {
        (Some("password"), _) => {
            Some("Your password is changed. Every other device and browser is signed out.".into())
        }
        (_, Some(_)) => Some("Confirmed. You can change your password now.".into()),
        _ => None,
    };
    let page_ = security_page(&app, &p, layout).await?;
    Ok(page(StatusCode::OK, &page_))
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    #[serde(default)]
    csrf: String,
    new_password: SecretString,
    repeat: SecretString,
}

/// Changes the password (a fresh step-up first); every other session ends.
pub(crate) async fn change_password(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    client: Client,
    WebForm(form): WebForm<PasswordForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let again = |message: String, status: StatusCode| {
        let (app, p) = (app.clone(), p.clone());
        async move {
            let mut layout = Layout::for_session(&app, &p, "Security");
            layout.error = Some(message);
            let page_ = security_page(&app, &p, layout).await?;
            Ok::<Response, PageError>(page(status, &page_))
        }
    };
    if form.new_password.expose_secret() != form.repeat.expose_secret() {
        return again(
            "The two passwords differ: type the same one twice.".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    match app
        .identity
        .change_password(&p, form.new_password, &client.info(None))
        .await
        .map_err(ApiError::from)
    {
        Ok(()) => Ok(Redirect::to("/web/security?changed=password").into_response()),
        Err(e) if e.code == "step_up_required" => {
            Ok(Redirect::to("/web/confirm?next=/web/security").into_response())
        }
        Err(e) => again(super::sentence(&e.message), e.status).await,
    }
}
