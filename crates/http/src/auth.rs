//! Sign-up, sign-in, tokens and password recovery.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mica_core::{AccountId, SessionId, Timestamp};
use mica_identity::{
    DeviceInfo, ResetStarted, SignInOutcome, SignedIn, SignupStarted, SignupTarget,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth, Client};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(signup_resend))
        .routes(routes!(signup_verify))
        .routes(routes!(sign_in, list_sessions, sign_out_everywhere))
        .routes(routes!(refresh))
        .routes(routes!(sign_out))
        .routes(routes!(revoke_session))
        .routes(routes!(forgot_password))
        .routes(routes!(reset_password))
}

/// Start creating an account with an email address or a phone number (with country code).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// Give either `email` or `phone`.
    #[schema(example = "ana@example.com")]
    pub email: Option<String>,
    /// E.164 with country code, e.g. `+44 20 7946 0958`.
    pub phone: Option<String>,
    /// At least 8 characters with letters, digits and a symbol; weak passwords are refused.
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Serialize, ToSchema)]
pub struct SignupResponse {
    /// Quote it when verifying or asking for a new code.
    pub signup_id: String,
    /// `email` or `sms`.
    pub channel: &'static str,
    /// Where the code went, masked.
    pub sent_to: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
    /// No new code before this time.
    #[schema(value_type = String, format = DateTime)]
    pub resend_after: String,
}

impl From<SignupStarted> for SignupResponse {
    fn from(s: SignupStarted) -> Self {
        SignupResponse {
            signup_id: s.signup_id,
            channel: s.channel,
            sent_to: s.sent_to,
            expires_at: s.expires_at.to_rfc3339(),
            resend_after: s.resend_after.to_rfc3339(),
        }
    }
}

/// Sends a 6-digit code to the email or phone; the account is created when it is confirmed.
#[utoipa::path(post, path = "/signup", tag = "account",
    request_body = SignupRequest,
    responses(
        (status = 202, description = "Code sent", body = SignupResponse),
        (status = 422, description = "Invalid email/phone or weak password", body = ErrorBody),
        (status = 429, description = "Too many codes or sign-ups; see Retry-After", body = ErrorBody),
    ))]
async fn signup(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<SignupRequest>,
) -> Result<(StatusCode, Json<SignupResponse>), ApiError> {
    let target = SignupTarget::parse(req.email.as_deref(), req.phone.as_deref())?;
    let started = app
        .identity
        .start_signup(target, req.password, &client.info(None))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(started.into())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupResendRequest {
    pub signup_id: String,
}

/// Sends a new code for a pending sign-up; the previous code stops working.
#[utoipa::path(post, path = "/signup/resend", tag = "account",
    request_body = SignupResendRequest,
    responses(
        (status = 202, description = "New code sent", body = SignupResponse),
        (status = 400, description = "Unknown, used or expired sign-up", body = ErrorBody),
        (status = 429, description = "Too soon; see Retry-After", body = ErrorBody),
    ))]
async fn signup_resend(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<SignupResendRequest>,
) -> Result<(StatusCode, Json<SignupResponse>), ApiError> {
    let started = app
        .identity
        .resend_signup(&req.signup_id, &client.info(None))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(started.into())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupVerifyRequest {
    pub signup_id: String,
    /// The 6-digit code.
    #[schema(example = "042917")]
    pub code: String,
    pub device: Option<DeviceInfo>,
}

/// Tokens of a new session.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub account_id: AccountId,
    pub session_id: SessionId,
    /// Always `Bearer`.
    pub token_type: String,
    /// Send as `Authorization: Bearer …`. Short-lived.
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    #[schema(value_type = String, format = DateTime)]
    pub access_token_expires_at: String,
    /// Exchange at `POST /api/v1/sessions/refresh` for a new pair; single use.
    pub refresh_token: String,
    #[schema(value_type = String, format = DateTime)]
    pub refresh_token_expires_at: String,
}

pub(crate) fn tokens(s: SignedIn, now: Timestamp) -> TokenResponse {
    TokenResponse {
        account_id: s.account,
        session_id: s.session,
        token_type: "Bearer".into(),
        access_token: s.access_token,
        expires_in: now.until(s.access_expires_at).as_secs(),
        access_token_expires_at: s.access_expires_at.to_rfc3339(),
        refresh_token: s.refresh_token,
        refresh_token_expires_at: s.session_expires_at.to_rfc3339(),
    }
}

/// Confirms a sign-up with its code: the account is created and signed in.
#[utoipa::path(post, path = "/signup/verify", tag = "account",
    request_body = SignupVerifyRequest,
    responses(
        (status = 201, description = "Account created and signed in", body = TokenResponse),
        (status = 400, description = "Wrong, expired or exhausted code", body = ErrorBody),
        (status = 409, description = "The email or phone already has an account", body = ErrorBody),
    ))]
async fn signup_verify(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<SignupVerifyRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    let s = app
        .identity
        .verify_signup(&req.signup_id, &req.code, &client.info(req.device))
        .await?;
    Ok((StatusCode::CREATED, Json(tokens(s, app.clock.now()))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    /// Account number, email address or phone number (with country code).
    #[schema(example = "1624635123")]
    pub login: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    pub device: Option<DeviceInfo>,
}

/// A sign-in that needs a second factor.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TwoStepChallengeResponse {
    /// Always true.
    pub two_step_required: bool,
    /// Finish at `POST /api/v1/sessions/two-step` with this id and a second factor.
    pub challenge_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
    /// Which second factors this account can use: `totp`, `recovery_code`, `email`, `sms`.
    pub methods: Vec<String>,
}

/// Signs in with the account number, email or phone, and the password. With two-step
/// verification on, the answer is `202` with a challenge to finish with a second factor.
#[utoipa::path(post, path = "/sessions", tag = "sessions",
    request_body = SignInRequest,
    responses(
        (status = 201, description = "Signed in", body = TokenResponse),
        (status = 202, description = "Password right; a second factor is needed", body = TwoStepChallengeResponse),
        (status = 401, description = "Wrong identifier or password", body = ErrorBody),
        (status = 403, description = "Right password, but the operator suspended the account (`account_suspended`)", body = ErrorBody),
        (status = 429, description = "Too many attempts; see Retry-After", body = ErrorBody),
    ))]
async fn sign_in(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<SignInRequest>,
) -> Result<Response, ApiError> {
    match app
        .identity
        .sign_in(&req.login, req.password, &client.info(req.device))
        .await?
    {
        SignInOutcome::SignedIn(s) => {
            Ok((StatusCode::CREATED, Json(tokens(s, app.clock.now()))).into_response())
        }
        SignInOutcome::TwoStep {
            challenge_id,
            expires_at,
            methods,
        } => Ok((
            StatusCode::ACCEPTED,
            Json(TwoStepChallengeResponse {
                two_step_required: true,
                challenge_id,
                expires_at: expires_at.to_rfc3339(),
                methods: methods.into_iter().map(String::from).collect(),
            }),
        )
            .into_response()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Exchanges a refresh token for a new access and refresh token. A refresh token works once;
/// presenting a used one again signs that session out.
#[utoipa::path(post, path = "/sessions/refresh", tag = "sessions",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenResponse),
        (status = 401, description = "Invalid or reused refresh token", body = ErrorBody),
    ))]
async fn refresh(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let s = app
        .identity
        .refresh(&req.refresh_token, &client.info(None))
        .await?;
    Ok(Json(tokens(s, app.clock.now())))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub id: SessionId,
    /// What the user agent says: client, operating system, kind of device.
    pub agent: crate::account::AgentView,
    /// The session making this request.
    pub current: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub last_used_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
    pub ip: String,
    pub user_agent: String,
    pub device_model: Option<String>,
    pub os_version: Option<String>,
    pub client: Option<String>,
}

/// Lists the account's signed-in sessions.
#[utoipa::path(get, path = "/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = Vec<SessionView>), (status = 401, body = ErrorBody)))]
async fn list_sessions(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let list = app.identity.sessions(&p).await?;
    Ok(Json(
        list.into_iter()
            .map(|s| SessionView {
                agent: crate::account::AgentView::of(&s.user_agent),
                id: s.id,
                current: s.current,
                created_at: s.created_at.to_rfc3339(),
                last_used_at: s.last_used_at.to_rfc3339(),
                expires_at: s.expires_at.to_rfc3339(),
                ip: s.ip,
                user_agent: s.user_agent,
                device_model: s.device_model,
                os_version: s.os_version,
                client: s.client,
            })
            .collect(),
    ))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RevokedResponse {
    /// How many sessions were signed out.
    pub revoked: u64,
}

/// Signs out every session of the account, this one included.
#[utoipa::path(delete, path = "/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = RevokedResponse), (status = 401, body = ErrorBody)))]
async fn sign_out_everywhere(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
) -> Result<Json<RevokedResponse>, ApiError> {
    let revoked = app
        .identity
        .sign_out_everywhere(&p, &client.info(None))
        .await?;
    Ok(Json(RevokedResponse { revoked }))
}

/// Signs out the current session.
#[utoipa::path(delete, path = "/sessions/current", tag = "sessions", security(("bearer" = [])),
    responses((status = 204, description = "Signed out"), (status = 401, body = ErrorBody)))]
async fn sign_out(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
) -> Result<StatusCode, ApiError> {
    let id = p.session.clone();
    app.identity
        .revoke_session(&p, &id, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Signs out one session of the account.
#[utoipa::path(delete, path = "/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 204, description = "Signed out"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_session(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::not_found());
    }
    app.identity
        .revoke_session(&p, &SessionId(id), &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotRequest {
    /// Account number, email or phone number.
    pub login: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ForgotResponse {
    /// Quote it with the code at `POST /api/v1/password/reset`.
    pub reset_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub resend_after: String,
    pub message: String,
}

impl From<ResetStarted> for ForgotResponse {
    fn from(r: ResetStarted) -> Self {
        ForgotResponse {
            reset_id: r.reset_id,
            expires_at: r.expires_at.to_rfc3339(),
            resend_after: r.resend_after.to_rfc3339(),
            message: "If an account matches, a code has been sent to its email address or phone."
                .into(),
        }
    }
}

/// Sends a password-reset code. The answer is the same whether or not an account matches.
#[utoipa::path(post, path = "/password/forgot", tag = "account",
    request_body = ForgotRequest,
    responses(
        (status = 202, description = "A code was sent if an account matches", body = ForgotResponse),
        (status = 422, description = "Not an account number, email or phone number", body = ErrorBody),
        (status = 429, description = "Too many codes; see Retry-After", body = ErrorBody),
    ))]
async fn forgot_password(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<ForgotRequest>,
) -> Result<(StatusCode, Json<ForgotResponse>), ApiError> {
    let r = app
        .identity
        .forgot_password(&req.login, &client.info(None))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(r.into())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    pub reset_id: String,
    pub code: String,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
}

/// Sets a new password with the code; every session of the account is signed out.
#[utoipa::path(post, path = "/password/reset", tag = "account",
    request_body = ResetRequest,
    responses(
        (status = 204, description = "Password changed; all sessions signed out"),
        (status = 400, description = "Wrong, expired or exhausted code", body = ErrorBody),
        (status = 422, description = "Weak password", body = ErrorBody),
    ))]
async fn reset_password(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<ResetRequest>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .reset_password(
            &req.reset_id,
            &req.code,
            req.new_password,
            &client.info(None),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
