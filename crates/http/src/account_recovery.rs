//! Recovering an account whose every factor is lost (ID-18): a request that waits, that the
//! owner is told of and can cancel, and that an operator decides (`mica admin recovery`). See
//! docs/design/identity.md.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mica_identity::{FinishStarted, RecoveryRequestView, RecoveryStarted, RecoveryStatus};
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
        .routes(routes!(request_recovery))
        .routes(routes!(verify_contact))
        .routes(routes!(status))
        .routes(routes!(cancel_with_code))
        .routes(routes!(finish))
        .routes(routes!(complete))
        .routes(routes!(my_requests))
        .routes(routes!(cancel_mine))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRequest {
    /// The account to recover: its number, or the email or phone it had.
    pub login: String,
    /// An email address or phone number the requester can receive codes at now.
    pub contact: String,
    /// What happened and what the requester remembers (10 to 2000 characters), for the
    /// operator who reviews the request.
    pub statement: String,
    /// Answers to the account's security questions, in order, if remembered (at most three).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub answers: Vec<SecretString>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RecoveryStartedResponse {
    /// Quote it with the code sent to `contact`, and to follow the request.
    pub request_id: String,
    /// The code expires then; to get another, file the request again.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
    pub message: String,
}

impl From<RecoveryStarted> for RecoveryStartedResponse {
    fn from(r: RecoveryStarted) -> Self {
        RecoveryStartedResponse {
            request_id: r.request_id,
            expires_at: r.expires_at.to_rfc3339(),
            message: "A code was sent to the contact address; confirm it to file the request."
                .into(),
        }
    }
}

/// Asks to recover an account without any of its factors: a code goes to the contact address.
/// The answer is the same whether or not an account matches.
#[utoipa::path(post, path = "/account-recovery", tag = "account",
    request_body = RecoveryRequest,
    responses(
        (status = 202, description = "A code was sent to the contact address", body = RecoveryStartedResponse),
        (status = 422, description = "Not a login, not a contact address, or no statement", body = ErrorBody),
        (status = 429, description = "Too many requests; see Retry-After", body = ErrorBody),
    ))]
async fn request_recovery(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<RecoveryRequest>,
) -> Result<(StatusCode, Json<RecoveryStartedResponse>), ApiError> {
    let r = app
        .identity
        .request_recovery(
            &req.login,
            &req.contact,
            &req.statement,
            &req.answers,
            &client.info(None),
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(r.into())))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RecoveryStatusResponse {
    pub request_id: String,
    /// `unverified`, `waiting`, `in_review`, `approved`, `completed`, `cancelled`, `denied` or
    /// `expired`.
    pub state: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    /// End of the waiting period, once the contact is confirmed.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub wait_until: Option<String>,
    /// For an approved request: finish it before this time.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finish_by: Option<String>,
    /// Why it was denied, cancelled or expired.
    pub reason: Option<String>,
}

impl From<RecoveryStatus> for RecoveryStatusResponse {
    fn from(s: RecoveryStatus) -> Self {
        RecoveryStatusResponse {
            request_id: s.request_id,
            state: s.state,
            created_at: s.created_at.to_rfc3339(),
            wait_until: s.wait_until.map(|t| t.to_rfc3339()),
            finish_by: s.finish_by.map(|t| t.to_rfc3339()),
            reason: s.reason,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyContact {
    pub request_id: String,
    pub code: String,
}

/// Confirms the contact address with its code: the request is filed and starts waiting, and
/// every address of the account is told.
#[utoipa::path(post, path = "/account-recovery/verify", tag = "account",
    request_body = VerifyContact,
    responses(
        (status = 200, description = "Filed; waiting", body = RecoveryStatusResponse),
        (status = 400, description = "Wrong, expired or exhausted code", body = ErrorBody),
    ))]
async fn verify_contact(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<VerifyContact>,
) -> Result<Json<RecoveryStatusResponse>, ApiError> {
    let s = app
        .identity
        .verify_recovery_contact(&req.request_id, &req.code, &client.info(None))
        .await?;
    Ok(Json(s.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestRef {
    pub request_id: String,
}

/// Where a recovery request stands.
#[utoipa::path(post, path = "/account-recovery/status", tag = "account",
    request_body = RequestRef,
    responses(
        (status = 200, body = RecoveryStatusResponse),
        (status = 404, description = "No such request", body = ErrorBody),
    ))]
async fn status(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RequestRef>,
) -> Result<Json<RecoveryStatusResponse>, ApiError> {
    let s = app.identity.recovery_status(&req.request_id).await?;
    Ok(Json(s.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelWithCode {
    pub request_id: String,
    /// The cancel code in the notice sent to the account's addresses.
    pub cancel_code: String,
}

/// Cancels a recovery request with the code sent to the account's addresses, without signing
/// in.
#[utoipa::path(post, path = "/account-recovery/cancel", tag = "account",
    request_body = CancelWithCode,
    responses(
        (status = 204, description = "Cancelled"),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "Already closed or completed", body = ErrorBody),
        (status = 422, description = "Wrong cancel code", body = ErrorBody),
        (status = 429, description = "Too many tries; see Retry-After", body = ErrorBody),
    ))]
async fn cancel_with_code(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<CancelWithCode>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .cancel_recovery_with_code(&req.request_id, &req.cancel_code, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct FinishResponse {
    /// Quote it with the code at `POST /api/v1/account-recovery/complete`.
    pub challenge_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
}

impl From<FinishStarted> for FinishResponse {
    fn from(f: FinishStarted) -> Self {
        FinishResponse {
            challenge_id: f.challenge_id,
            expires_at: f.expires_at.to_rfc3339(),
        }
    }
}

/// For an approved request: sends a code to the confirmed contact address.
#[utoipa::path(post, path = "/account-recovery/finish", tag = "account",
    request_body = RequestRef,
    responses(
        (status = 202, description = "A code was sent to the contact address", body = FinishResponse),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "Not approved (yet, or any more)", body = ErrorBody),
        (status = 429, description = "Too many codes; see Retry-After", body = ErrorBody),
    ))]
async fn finish(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<RequestRef>,
) -> Result<(StatusCode, Json<FinishResponse>), ApiError> {
    let f = app
        .identity
        .finish_recovery(&req.request_id, &client.info(None))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(f.into())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRecovery {
    pub challenge_id: String,
    pub code: String,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
}

/// Sets a new password: the contact address becomes the account's, every session is signed
/// out and two-step verification is turned off.
#[utoipa::path(post, path = "/account-recovery/complete", tag = "account",
    request_body = CompleteRecovery,
    responses(
        (status = 204, description = "Recovered; sign in with the new password"),
        (status = 400, description = "Wrong, expired or exhausted code", body = ErrorBody),
        (status = 409, description = "Not approved any more, or the contact belongs to another account", body = ErrorBody),
        (status = 422, description = "Weak password", body = ErrorBody),
    ))]
async fn complete(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<CompleteRecovery>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .complete_recovery(
            &req.challenge_id,
            &req.code,
            req.new_password,
            &client.info(None),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RecoveryRequestItem {
    pub id: String,
    /// `waiting`, `in_review` or `approved`.
    pub state: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub wait_until: Option<String>,
    /// The address the requester confirmed, partly hidden.
    pub contact: String,
    pub ip: String,
    pub user_agent: String,
}

impl From<RecoveryRequestView> for RecoveryRequestItem {
    fn from(v: RecoveryRequestView) -> Self {
        RecoveryRequestItem {
            id: v.id,
            state: v.state,
            created_at: v.created_at.to_rfc3339(),
            wait_until: v.wait_until.map(|t| t.to_rfc3339()),
            contact: v.contact,
            ip: v.ip,
            user_agent: v.user_agent,
        }
    }
}

/// Open requests to recover the signed-in account.
#[utoipa::path(get, path = "/security/recovery-requests", tag = "security", security(("bearer" = [])),
    responses((status = 200, body = Vec<RecoveryRequestItem>), (status = 401, body = ErrorBody)))]
async fn my_requests(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<RecoveryRequestItem>>, ApiError> {
    let list = app.identity.recovery_requests_of(&p).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// Cancels a request to recover the signed-in account. No step-up: stopping a takeover is
/// open to whoever holds a session.
#[utoipa::path(delete, path = "/security/recovery-requests/{id}", tag = "security", security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already closed or completed", body = ErrorBody),
    ))]
async fn cancel_mine(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .cancel_recovery(&p, &id, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
