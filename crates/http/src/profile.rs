//! Profile, avatar and security checkup.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mica_identity::profile::MAX_AVATAR_UPLOAD;
use mica_identity::Profile;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    // Only the avatar takes more than a JSON body's worth.
    let avatar = OpenApiRouter::new()
        .routes(routes!(get_avatar, put_avatar, delete_avatar))
        .layer(DefaultBodyLimit::max(MAX_AVATAR_UPLOAD));
    OpenApiRouter::new()
        .routes(routes!(get_profile, put_profile))
        .routes(routes!(checkup))
        .merge(avatar)
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    /// At most 64 characters.
    pub nickname: Option<String>,
    /// `female`, `male`, `other` or `undisclosed`.
    pub gender: Option<String>,
    /// Two-letter ISO 3166 region, e.g. `PT`.
    pub country: Option<String>,
    /// Language tag, e.g. `pt-BR`.
    pub locale: Option<String>,
    /// Read-only: whether an avatar is set (`GET /api/v1/me/avatar`).
    #[serde(default)]
    pub has_avatar: bool,
}

impl From<Profile> for ProfileBody {
    fn from(p: Profile) -> Self {
        ProfileBody {
            nickname: p.nickname,
            gender: p.gender,
            country: p.country,
            locale: p.locale,
            has_avatar: p.has_avatar,
        }
    }
}

/// The profile.
#[utoipa::path(get, path = "/me/profile", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = ProfileBody), (status = 401, body = ErrorBody)))]
async fn get_profile(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<ProfileBody>, ApiError> {
    Ok(Json(app.identity.profile(&p).await?.into()))
}

/// Replaces the profile (fields left out are cleared).
#[utoipa::path(put, path = "/me/profile", tag = "account", security(("bearer" = [])),
    request_body = ProfileBody,
    responses((status = 200, body = ProfileBody), (status = 422, body = ErrorBody)))]
async fn put_profile(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(body): ApiJson<ProfileBody>,
) -> Result<Json<ProfileBody>, ApiError> {
    let profile = Profile {
        nickname: body.nickname,
        gender: body.gender,
        country: body.country,
        locale: body.locale,
        has_avatar: false,
    };
    Ok(Json(app.identity.set_profile(&p, profile).await?.into()))
}

/// The raw body of an upload, with the API's error shape for a body that is too large.
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|rej| {
                if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the file is larger than 5 MB",
                    )
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rej.body_text())
                }
            })
    }
}

/// The avatar, as a PNG of at most 256×256.
#[utoipa::path(get, path = "/me/avatar", tag = "account", security(("bearer" = [])),
    responses((status = 200, content_type = "image/png", description = "The avatar"), (status = 404, body = ErrorBody)))]
async fn get_avatar(State(app): State<AppState>, Auth(p): Auth) -> Result<Response, ApiError> {
    let png = app.identity.avatar(&p).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=60"),
        ],
        png,
    )
        .into_response())
}

/// Sets the avatar: send the image (PNG, JPEG or WebP, at most 5 MB) as the body. It is checked,
/// scaled to at most 256×256 and stored as PNG.
#[utoipa::path(put, path = "/me/avatar", tag = "account", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "image/png"),
    responses((status = 204, description = "Set"), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, description = "Not a usable image", body = ErrorBody)))]
async fn put_avatar(
    State(app): State<AppState>,
    Auth(p): Auth,
    headers: axum::http::HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<StatusCode, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(ct, "image/png" | "image/jpeg" | "image/webp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the image with Content-Type image/png, image/jpeg or image/webp",
        ));
    }
    app.identity.set_avatar(&p, body.to_vec()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the avatar.
#[utoipa::path(delete, path = "/me/avatar", tag = "account", security(("bearer" = [])),
    responses((status = 204, description = "Removed"), (status = 401, body = ErrorBody)))]
async fn delete_avatar(State(app): State<AppState>, Auth(p): Auth) -> Result<StatusCode, ApiError> {
    app.identity.remove_avatar(&p).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CheckupStepView {
    pub id: String,
    pub done: bool,
    /// Points this step adds to the score when done.
    pub points: u32,
    pub advice: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CheckupResponse {
    /// 0–100.
    pub score: u32,
    /// Every step, done or not; the ones not done say what to do.
    pub steps: Vec<CheckupStepView>,
}

/// The security checkup: a 0–100 score and the concrete steps that raise it.
#[utoipa::path(get, path = "/me/security-checkup", tag = "security", security(("bearer" = [])),
    responses((status = 200, body = CheckupResponse), (status = 401, body = ErrorBody)))]
async fn checkup(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<CheckupResponse>, ApiError> {
    let (score, steps) = app.identity.security_checkup(&p).await?;
    Ok(Json(CheckupResponse {
        score,
        steps: steps
            .into_iter()
            .map(|s| CheckupStepView {
                id: s.id.into(),
                done: s.done,
                points: s.points,
                advice: s.advice.into(),
            })
            .collect(),
    }))
}
