//! Passkeys: register, list and remove them; sign in or step up with one.
//!
//! Every ceremony is two calls: the first returns a `challenge_id` and the `options` to hand to
//! `navigator.credentials.create()` / `.get()` unchanged; the second sends back the
//! authenticator's answer (the `PublicKeyCredential` as JSON, binary fields base64url).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mica_identity::webauthn::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse,
};
use mica_identity::{DeviceInfo, PasskeyCeremony, PasskeyInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{tokens, TokenResponse};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth, Client};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(begin_registration))
        .routes(routes!(list_passkeys, finish_registration))
        .routes(routes!(remove_passkey))
        .routes(routes!(begin_sign_in))
        .routes(routes!(finish_sign_in))
        .routes(routes!(begin_step_up))
}

/// A passkey registration to run on the authenticator.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegistrationCeremony {
    /// Send back with the authenticator's answer.
    pub challenge_id: String,
    /// For `navigator.credentials.create()`.
    #[schema(value_type = Object)]
    pub options: CreationChallengeResponse,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
}

/// A passkey assertion (sign-in or step-up) to run on the authenticator.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AssertionCeremony {
    /// Send back with the authenticator's answer.
    pub challenge_id: String,
    /// For `navigator.credentials.get()`.
    #[schema(value_type = Object)]
    pub options: RequestChallengeResponse,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
}

impl From<PasskeyCeremony<CreationChallengeResponse>> for RegistrationCeremony {
    fn from(c: PasskeyCeremony<CreationChallengeResponse>) -> Self {
        RegistrationCeremony {
            challenge_id: c.challenge_id,
            options: c.options,
            expires_at: c.expires_at.to_rfc3339(),
        }
    }
}

impl From<PasskeyCeremony<RequestChallengeResponse>> for AssertionCeremony {
    fn from(c: PasskeyCeremony<RequestChallengeResponse>) -> Self {
        AssertionCeremony {
            challenge_id: c.challenge_id,
            options: c.options,
            expires_at: c.expires_at.to_rfc3339(),
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PasskeyView {
    pub id: String,
    /// What its owner called it, such as the device it lives on.
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<String>,
}

impl From<PasskeyInfo> for PasskeyView {
    fn from(p: PasskeyInfo) -> Self {
        PasskeyView {
            id: p.id,
            name: p.name,
            created_at: p.created_at.to_rfc3339(),
            last_used_at: p.last_used_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// Starts adding a passkey to the account (step-up required).
#[utoipa::path(post, path = "/me/passkeys/registration", tag = "passkeys", security(("bearer" = [])),
    responses((status = 201, body = RegistrationCeremony), (status = 401, body = ErrorBody),
              (status = 403, description = "Step-up required", body = ErrorBody),
              (status = 503, description = "Passkeys need a domain name", body = ErrorBody)))]
async fn begin_registration(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<(StatusCode, Json<RegistrationCeremony>), ApiError> {
    let c = app.identity.begin_passkey_registration(&p).await?;
    Ok((StatusCode::CREATED, Json(c.into())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishRegistrationRequest {
    pub challenge_id: String,
    /// A name for the passkey, 1–64 characters.
    pub name: String,
    /// What `navigator.credentials.create()` returned.
    #[schema(value_type = Object)]
    pub credential: RegisterPublicKeyCredential,
}

/// Finishes adding a passkey with the authenticator's answer.
#[utoipa::path(post, path = "/me/passkeys", tag = "passkeys", security(("bearer" = [])),
    request_body = FinishRegistrationRequest,
    responses((status = 201, body = PasskeyView),
              (status = 400, description = "Expired challenge or a rejected credential", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn finish_registration(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    ApiJson(req): ApiJson<FinishRegistrationRequest>,
) -> Result<(StatusCode, Json<PasskeyView>), ApiError> {
    let info = app
        .identity
        .finish_passkey_registration(
            &p,
            &req.challenge_id,
            &req.name,
            &req.credential,
            &client.info(None),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// The account's passkeys.
#[utoipa::path(get, path = "/me/passkeys", tag = "passkeys", security(("bearer" = [])),
    responses((status = 200, body = Vec<PasskeyView>), (status = 401, body = ErrorBody)))]
async fn list_passkeys(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<PasskeyView>>, ApiError> {
    let list = app.identity.list_passkeys(&p).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// Removes a passkey (step-up required); it can no longer sign in.
#[utoipa::path(delete, path = "/me/passkeys/{id}", tag = "passkeys", security(("bearer" = [])),
    params(("id" = String, Path, description = "The passkey's id")),
    responses((status = 204, description = "Removed"), (status = 401, body = ErrorBody),
              (status = 403, description = "Step-up required", body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn remove_passkey(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.identity
        .remove_passkey(&p, &id, &client.info(None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeySignInStart {
    /// Account number, email address or phone number.
    pub login: String,
}

/// Starts signing in with a passkey.
#[utoipa::path(post, path = "/sessions/passkey/challenge", tag = "passkeys",
    request_body = PasskeySignInStart,
    responses((status = 200, body = AssertionCeremony),
              (status = 400, description = "No passkey for this account", body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn begin_sign_in(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<PasskeySignInStart>,
) -> Result<Json<AssertionCeremony>, ApiError> {
    let c = app
        .identity
        .begin_passkey_sign_in(&req.login, &client.info(None))
        .await?;
    Ok(Json(c.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeySignInFinish {
    pub challenge_id: String,
    /// What `navigator.credentials.get()` returned.
    #[schema(value_type = Object)]
    pub credential: PublicKeyCredential,
    pub device: Option<DeviceInfo>,
}

/// Signs in with a passkey's answer. A passkey verifies its user, so no second step follows.
#[utoipa::path(post, path = "/sessions/passkey", tag = "passkeys",
    request_body = PasskeySignInFinish,
    responses((status = 201, description = "Signed in", body = TokenResponse),
              (status = 400, description = "Expired or answered challenge, or a rejected assertion", body = ErrorBody)))]
async fn finish_sign_in(
    State(app): State<AppState>,
    client: Client,
    ApiJson(req): ApiJson<PasskeySignInFinish>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    let s = app
        .identity
        .finish_passkey_sign_in(&req.challenge_id, &req.credential, &client.info(req.device))
        .await?;
    Ok((StatusCode::CREATED, Json(tokens(s, app.clock.now()))))
}

/// Starts a step-up with a passkey; answer at `POST /api/v1/step-up/verify` with
/// `challenge_id` and `passkey`.
#[utoipa::path(post, path = "/step-up/passkey", tag = "security", security(("bearer" = [])),
    responses((status = 200, body = AssertionCeremony), (status = 401, body = ErrorBody),
              (status = 400, description = "The account has no passkey", body = ErrorBody)))]
async fn begin_step_up(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<AssertionCeremony>, ApiError> {
    Ok(Json(app.identity.begin_passkey_step_up(&p).await?.into()))
}
