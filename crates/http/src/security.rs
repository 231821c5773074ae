//! Step-up verification, password change, two-step verification and the security log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mica_identity::{CodeChannel, CodeSent, DeviceInfo, SecondFactor, StepUpProof};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{tokens, TokenResponse};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Auth, Client};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_step_up))
        .routes(routes!(verify_step_up))
        .routes(routes!(change_password))
        .routes(routes!(two_step_status))
        .routes(routes!(begin_totp, disable_totp))
        .routes(routes!(confirm_totp))
        .routes(routes!(regenerate_recovery_codes))
        .routes(routes!(security_events))
        .routes(routes!(two_step_sign_in))
        .routes(routes!(two_step_send))
        .routes(routes!(recovery_overview, add_recovery_factor))
        .routes(routes!(confirm_recovery_factor))
        .routes(routes!(remove_recovery_factor))
        .routes(routes!(set_security_questions))
        .routes(routes!(change_identifier))
        .routes(routes!(confirm_identifier))
        .routes(routes!(request_deletion))
        .routes(routes!(confirm_deletion))
        .routes(routes!(list_app_passwords, create_app_password))
        .routes(routes!(revoke_app_password))
}

#[derive(Deserialize, Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
}

impl From<Channel> for CodeChannel {
    fn from(c: Channel) -> Self {
        match c {
            Channel::Email => CodeChannel::Email,
            Channel::Sms => CodeChannel::Sms,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpRequest {
    /// Where to send the code: the account's own `email` or `sms` to its phone.
    pub channel: Channel,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CodeSentResponse {
    pub challenge_id: String,
    /// `email` or `sms`.
    pub channel: String,
    /// Where the code went, masked.
    pub sent_to: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
}

impl From<CodeSent> for CodeSentResponse {
    fn from(c: CodeSent) -> Self {
        CodeSentResponse {
            challenge_id: c.challenge_id,
            channel: c.channel.into(),
            sent_to: c.sent_to,
            expires_at: c.expires_at.to_rfc3339(),
        }
    }
}

/// Sends a code to the account's email or phone to confirm it's you before a change.
#[utoipa::path(post, path = "/step-up", tag = "security", security(("bearer" = [])),
    request_body = StepUpRequest,
    responses((status = 202, body = CodeSentResponse), (status = 401, body = ErrorBody),
              (status = 422, description = "The account has no such factor", body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn start_step_up(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<StepUpRequest>,
) -> Result<(StatusCode, Json<CodeSentResponse>), ApiError> {
    let sent = app
        .identity
        .start_step_up(&p, req.channel.into(), &client.info(None))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(sent.into())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpVerifyRequest {
    /// With `code`: the challenge from `POST /api/v1/step-up`.
    pub challenge_id: Option<String>,
    /// The code that was sent.
    pub code: Option<String>,
    /// Or a code from the authenticator app.
    pub totp: Option<String>,
    /// Or, with `challenge_id` from `POST /api/v1/step-up/passkey`, what
    /// `navigator.credentials.get()` returned.
    #[schema(value_type = Option<Object>)]
    pub passkey: Option<Box<mica_identity::webauthn::PublicKeyCredential>>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct StepUpResponse {
    /// This session may change the account until then.
    #[schema(value_type = String, format = DateTime)]
    pub stepped_up_until: String,
}

/// Proves a fresh factor; this session may then change the account for ten minutes.
#[utoipa::path(post, path = "/step-up/verify", tag = "security", security(("bearer" = [])),
    request_body = StepUpVerifyRequest,
    responses((status = 200, body = StepUpResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn verify_step_up(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<StepUpVerifyRequest>,
) -> Result<Json<StepUpResponse>, ApiError> {
    let proof = match (req.challenge_id, req.code, req.totp, req.passkey) {
        (Some(challenge_id), Some(code), None, None) => StepUpProof::Code { challenge_id, code },
        (None, None, Some(t), None) => StepUpProof::Totp(t),
        (Some(challenge_id), None, None, Some(credential)) => StepUpProof::Passkey {
            challenge_id,
            credential,
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "give either `challenge_id` and `code`, or `totp`, or `challenge_id` and `passkey`",
            ))
        }
    };
    let until = app
        .identity
        .verify_step_up(&p, proof, &client.info(None))
        .await?;
    Ok(Json(StepUpResponse {
        stepped_up_until: until.to_rfc3339(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
}

/// Changes the password (step-up required); every other session is signed out.
#[utoipa::path(post, path = "/me/password", tag = "security", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses((status = 204, description = "Changed"), (status = 401, body = ErrorBody),
              (status = 403, description = "Step-up required", body = ErrorBody),
              (status = 422, description = "Weak password", body = ErrorBody)))]
async fn change_password(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .change_password(&p, req.new_password, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TwoStepStatusResponse {
    /// Two-step sign-in with an authenticator app is on.
    pub totp: bool,
    pub recovery_codes_left: i64,
}

/// Which second factors are set up.
#[utoipa::path(get, path = "/me/two-step", tag = "security", security(("bearer" = [])),
    responses((status = 200, body = TwoStepStatusResponse), (status = 401, body = ErrorBody)))]
async fn two_step_status(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<TwoStepStatusResponse>, ApiError> {
    let s = app.identity.two_step_status(&p).await?;
    Ok(Json(TwoStepStatusResponse {
        totp: s.totp,
        recovery_codes_left: s.recovery_codes_left,
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TotpEnrollmentResponse {
    /// The shared secret, base32, for typing into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/…`, what the QR code encodes.
    pub otpauth_uri: String,
    /// The QR code as an SVG image.
    pub qr_svg: String,
}

/// Starts setting up an authenticator app (step-up required). Confirm with its first code.
#[utoipa::path(post, path = "/me/two-step/totp", tag = "security", security(("bearer" = [])),
    responses((status = 201, body = TotpEnrollmentResponse), (status = 403, body = ErrorBody),
              (status = 409, description = "Already on", body = ErrorBody)))]
async fn begin_totp(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<(StatusCode, Json<TotpEnrollmentResponse>), ApiError> {
    let e = app.identity.begin_totp(&p).await?;
    Ok((
        StatusCode::CREATED,
        Json(TotpEnrollmentResponse {
            secret: e.secret_base32,
            otpauth_uri: e.otpauth_uri,
            qr_svg: e.qr_svg,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpConfirmRequest {
    pub code: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RecoveryCodesResponse {
    /// One-time codes for when the authenticator is lost. Shown once: store them safely.
    pub recovery_codes: Vec<String>,
}

/// Confirms the authenticator with its first code: two-step sign-in is on, and recovery codes are
/// returned once.
#[utoipa::path(post, path = "/me/two-step/totp/confirm", tag = "security", security(("bearer" = [])),
    request_body = TotpConfirmRequest,
    responses((status = 200, body = RecoveryCodesResponse), (status = 403, body = ErrorBody),
              (status = 422, description = "Wrong code", body = ErrorBody)))]
async fn confirm_totp(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<TotpConfirmRequest>,
) -> Result<Json<RecoveryCodesResponse>, ApiError> {
    let recovery_codes = app
        .identity
        .confirm_totp(&p, &req.code, &client.info(None))
        .await?;
    Ok(Json(RecoveryCodesResponse { recovery_codes }))
}

/// Turns two-step sign-in off (step-up required).
#[utoipa::path(delete, path = "/me/two-step/totp", tag = "security", security(("bearer" = [])),
    responses((status = 204, description = "Off"), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn disable_totp(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
) -> Result<StatusCode, ApiError> {
    app.identity.disable_totp(&p, &client.info(None)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the recovery codes (step-up required); the old ones stop working.
#[utoipa::path(post, path = "/me/two-step/recovery-codes", tag = "security", security(("bearer" = [])),
    responses((status = 200, body = RecoveryCodesResponse), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn regenerate_recovery_codes(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
) -> Result<Json<RecoveryCodesResponse>, ApiError> {
    let recovery_codes = app
        .identity
        .regenerate_recovery_codes(&p, &client.info(None))
        .await?;
    Ok(Json(RecoveryCodesResponse { recovery_codes }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// At most this many events, newest first (1–500, default 100).
    pub limit: Option<u32>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SecurityEventView {
    #[schema(value_type = String, format = DateTime)]
    pub at: String,
    /// `password_changed`, `password_reset`, `step_up`, `two_step_enabled`, `two_step_disabled`,
    /// `recovery_codes_regenerated`, `two_step_sign_in`, `recovery_code_used`, `signed_out`,
    /// `session_revoked`, `signed_out_everywhere`, `refresh_token_reused`.
    pub kind: String,
    pub ip: String,
    pub user_agent: String,
    pub session_id: Option<String>,
    pub detail: Option<String>,
}

/// The account's security log: who changed what, when, from where.
#[utoipa::path(get, path = "/me/security-events", tag = "security", security(("bearer" = [])),
    params(EventsQuery),
    responses((status = 200, body = Vec<SecurityEventView>), (status = 401, body = ErrorBody)))]
async fn security_events(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<Vec<SecurityEventView>>, ApiError> {
    let rows = app
        .identity
        .security_events(&p, i64::from(q.limit.unwrap_or(100)))
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|e| SecurityEventView {
                at: e.at.to_rfc3339(),
                kind: e.kind,
                ip: e.ip,
                user_agent: e.user_agent,
                session_id: e.session_id.map(|s| s.0),
                detail: e.detail,
            })
            .collect(),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TwoStepSignInRequest {
    pub challenge_id: String,
    /// A code from the authenticator app…
    pub totp: Option<String>,
    /// …or one of the recovery codes…
    pub recovery_code: Option<String>,
    /// …or the code sent by `POST /api/v1/sessions/two-step/send`.
    pub code: Option<String>,
    pub device: Option<DeviceInfo>,
}

/// Finishes a two-step sign-in with a second factor.
#[utoipa::path(post, path = "/sessions/two-step", tag = "sessions",
    request_body = TwoStepSignInRequest,
    responses((status = 201, body = TokenResponse), (status = 400, description = "Wrong, expired or exhausted", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn two_step_sign_in(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<TwoStepSignInRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    let factor = match (req.totp, req.recovery_code, req.code) {
        (Some(t), None, None) => SecondFactor::Totp(t),
        (None, Some(r), None) => SecondFactor::RecoveryCode(r),
        (None, None, Some(c)) => SecondFactor::Code(c),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "give exactly one of `totp`, `recovery_code` or `code`",
            ))
        }
    };
    let s = app
        .identity
        .complete_two_step(&req.challenge_id, factor, &client.info(req.device))
        .await?;
    Ok((StatusCode::CREATED, Json(tokens(s, app.clock.now()))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TwoStepSendRequest {
    pub challenge_id: String,
    pub channel: Channel,
}

/// Sends a second-factor code to the account's email or phone for a pending two-step sign-in.
#[utoipa::path(post, path = "/sessions/two-step/send", tag = "sessions",
    request_body = TwoStepSendRequest,
    responses((status = 202, body = CodeSentResponse), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn two_step_send(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<TwoStepSendRequest>,
) -> Result<(StatusCode, Json<CodeSentResponse>), ApiError> {
    let sent = app
        .identity
        .send_two_step_code(&req.challenge_id, req.channel.into(), &client.info(None))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(sent.into())))
}

/// Asks to delete the account (step-up required): a confirmation code is sent.
#[utoipa::path(post, path = "/me/deletion", tag = "security", security(("bearer" = [])),
    request_body = StepUpRequest,
    responses((status = 202, body = CodeSentResponse), (status = 403, description = "Step-up required", body = ErrorBody)))]
async fn request_deletion(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<StepUpRequest>,
) -> Result<(StatusCode, Json<CodeSentResponse>), ApiError> {
    let sent = app
        .identity
        .request_deletion(&p, req.channel.into(), &client.info(None))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(sent.into())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmDeletionRequest {
    pub challenge_id: String,
    pub code: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DeletionResponse {
    /// `deleting`: every session is signed out; the data is being removed for good.
    pub status: String,
}

/// Confirms the deletion with the code: every session is signed out at once and all the account's
/// data is removed for good in the background; its email and phone become free.
#[utoipa::path(post, path = "/me/deletion/confirm", tag = "security", security(("bearer" = [])),
    request_body = ConfirmDeletionRequest,
    responses((status = 202, body = DeletionResponse), (status = 400, body = ErrorBody),
              (status = 403, description = "Step-up required", body = ErrorBody)))]
async fn confirm_deletion(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<ConfirmDeletionRequest>,
) -> Result<(StatusCode, Json<DeletionResponse>), ApiError> {
    app.identity
        .confirm_deletion(&p, &req.challenge_id, &req.code, &client.info(None))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DeletionResponse {
            status: "deleting".into(),
        }),
    ))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RecoveryOverviewResponse {
    /// Masked.
    pub recovery_email: Option<String>,
    /// Masked.
    pub recovery_phone: Option<String>,
    /// The questions (never the answers).
    pub security_questions: Vec<String>,
}

/// The account's recovery setup.
#[utoipa::path(get, path = "/me/recovery", tag = "security", security(("bearer" = [])),
    responses((status = 200, body = RecoveryOverviewResponse), (status = 401, body = ErrorBody)))]
async fn recovery_overview(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<RecoveryOverviewResponse>, ApiError> {
    let o = app.identity.recovery_overview(&p).await?;
    Ok(Json(RecoveryOverviewResponse {
        recovery_email: o.recovery_email,
        recovery_phone: o.recovery_phone,
        security_questions: o.security_questions,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryFactorRequest {
    /// Give either a recovery `email` or a recovery `phone` (with country code).
    pub email: Option<String>,
    pub phone: Option<String>,
}

/// Adds (or replaces) the recovery email or phone (step-up required): a code goes to the new
/// address, and it is added once the code is confirmed.
#[utoipa::path(post, path = "/me/recovery", tag = "security", security(("bearer" = [])),
    request_body = RecoveryFactorRequest,
    responses((status = 202, body = CodeSentResponse), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn add_recovery_factor(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<RecoveryFactorRequest>,
) -> Result<(StatusCode, Json<CodeSentResponse>), ApiError> {
    let target = mica_identity::SignupTarget::parse(req.email.as_deref(), req.phone.as_deref())?;
    let sent = app
        .identity
        .add_recovery_factor(&p, target, &client.info(None))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(sent.into())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeConfirmRequest {
    pub challenge_id: String,
    pub code: String,
}

/// Confirms a new recovery address with the code sent to it.
#[utoipa::path(post, path = "/me/recovery/confirm", tag = "security", security(("bearer" = [])),
    request_body = CodeConfirmRequest,
    responses((status = 204, description = "Added"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn confirm_recovery_factor(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<CodeConfirmRequest>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .confirm_recovery_factor(&p, &req.challenge_id, &req.code, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the recovery `email` or `phone` (step-up required).
#[utoipa::path(delete, path = "/me/recovery/{kind}", tag = "security", security(("bearer" = [])),
    params(("kind" = String, Path, description = "`email` or `phone`")),
    responses((status = 204, description = "Removed"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_recovery_factor(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    axum::extract::Path(kind): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .remove_recovery_factor(&p, &kind, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuestionAnswer {
    pub question: String,
    #[schema(value_type = String, format = Password)]
    pub answer: SecretString,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityQuestionsRequest {
    /// Exactly three.
    pub questions: Vec<QuestionAnswer>,
}

/// Replaces the security questions (step-up required). Answers are stored hashed; they are a weak
/// factor and never enough alone to get into the account.
#[utoipa::path(put, path = "/me/security-questions", tag = "security", security(("bearer" = [])),
    request_body = SecurityQuestionsRequest,
    responses((status = 204, description = "Set"), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set_security_questions(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<SecurityQuestionsRequest>,
) -> Result<StatusCode, ApiError> {
    let qa = req
        .questions
        .into_iter()
        .map(|q| (q.question, q.answer))
        .collect();
    app.identity
        .set_security_questions(&p, qa, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds or changes the account's own email or phone (step-up required): a code goes to the new
/// address; the change happens when it is confirmed, and the old address is told.
#[utoipa::path(post, path = "/me/identifiers", tag = "security", security(("bearer" = [])),
    request_body = RecoveryFactorRequest,
    responses((status = 202, body = CodeSentResponse), (status = 403, body = ErrorBody),
              (status = 409, description = "Another account uses it", body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn change_identifier(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<RecoveryFactorRequest>,
) -> Result<(StatusCode, Json<CodeSentResponse>), ApiError> {
    let target = mica_identity::SignupTarget::parse(req.email.as_deref(), req.phone.as_deref())?;
    let sent = app
        .identity
        .start_identifier_change(&p, target, &client.info(None))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(sent.into())))
}

/// Confirms the new email or phone with the code sent to it.
#[utoipa::path(post, path = "/me/identifiers/confirm", tag = "security", security(("bearer" = [])),
    request_body = CodeConfirmRequest,
    responses((status = 204, description = "Changed"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn confirm_identifier(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<CodeConfirmRequest>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .confirm_identifier_change(&p, &req.challenge_id, &req.code, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct AppPasswordView {
    pub id: String,
    /// The device it is for.
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<String>,
}

impl From<mica_identity::app_passwords::AppPassword> for AppPasswordView {
    fn from(a: mica_identity::app_passwords::AppPassword) -> Self {
        AppPasswordView {
            id: a.id,
            name: a.name,
            created_at: a.created_at.to_rfc3339(),
            last_used_at: a.last_used_at.map(|t| t.to_rfc3339()),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAppPasswordRequest {
    /// The device it is for, e.g. "Laptop (rclone)".
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct NewAppPasswordResponse {
    #[serde(flatten)]
    pub app_password: AppPasswordView,
    /// The password, shown this once: type it into the device's WebDAV (HTTP Basic) settings
    /// with the account's email as the user name.
    pub password: String,
}

/// The account's app passwords (for WebDAV and other HTTP Basic clients).
#[utoipa::path(get, path = "/me/app-passwords", tag = "security", security(("bearer" = [])),
    responses((status = 200, body = Vec<AppPasswordView>), (status = 401, body = ErrorBody)))]
async fn list_app_passwords(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<AppPasswordView>>, ApiError> {
    let list = app.identity.app_passwords(&p).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// Creates an app password for one device (step-up required). The password is returned once.
#[utoipa::path(post, path = "/me/app-passwords", tag = "security", security(("bearer" = [])),
    request_body = NewAppPasswordRequest,
    responses((status = 201, body = NewAppPasswordResponse), (status = 403, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn create_app_password(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<NewAppPasswordRequest>,
) -> Result<(StatusCode, Json<NewAppPasswordResponse>), ApiError> {
    let created = app
        .identity
        .create_app_password(&p, &req.name, &client.info(None))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewAppPasswordResponse {
            app_password: created.app_password.into(),
            password: created.password,
        }),
    ))
}

/// Revokes an app password: the device using it is refused from its next request.
#[utoipa::path(delete, path = "/me/app-passwords/{id}", tag = "security", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke_app_password(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .revoke_app_password(&p, &id, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
